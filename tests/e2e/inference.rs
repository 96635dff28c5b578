//! The inference service's model management on a booted systemd.

use crate::ensure_eq;
use crate::harness::{Group, Reply, Sandbox, wait_for};
use anyhow::{Context, Result, ensure};
use std::time::Duration;

pub const GROUP: Group = Group {
    name: "inference",
    cases: &[
        ("models_are_the_config_files", models_are_the_config_files),
        (
            "start_restart_stop_a_model_as_abc",
            start_restart_stop_a_model_as_abc,
        ),
        (
            "a_model_that_fails_gets_502_with_the_reason",
            a_model_that_fails_gets_502_with_the_reason,
        ),
        (
            "a_model_started_with_systemctl_is_running",
            a_model_started_with_systemctl_is_running,
        ),
        (
            "hostile_and_unknown_names_change_nothing",
            hostile_and_unknown_names_change_nothing,
        ),
        (
            "a_name_too_long_as_a_unit_name_is_400",
            a_name_too_long_as_a_unit_name_is_400,
        ),
        (
            "a_model_server_cannot_schedule_a_power_action",
            a_model_server_cannot_schedule_a_power_action,
        ),
        (
            "a_config_symlink_to_a_root_only_file_leaks_nothing",
            a_config_symlink_to_a_root_only_file_leaks_nothing,
        ),
        (
            "activity_is_reported_and_survives_a_restart",
            activity_is_reported_and_survives_a_restart,
        ),
        (
            "two_listening_models_through_curl",
            two_listening_models_through_curl,
        ),
        (
            "idle_check_stops_idle_models_and_powers_off_via_a_timer",
            idle_check_stops_idle_models_and_powers_off_via_a_timer,
        ),
        (
            "on_demand_model_starts_on_first_request_and_stops_when_idle",
            on_demand_model_starts_on_first_request_and_stops_when_idle,
        ),
    ],
};

const DIR: &str = "/home/abc/models/configs";

fn setup_models(s: &Sandbox) -> Result<()> {
    s.ok(&format!(
        "mkdir -p {DIR} && cd {DIR} && rm -rf -- * .hidden && \
         printf 'PORT=8081\\nMODEL_COMMAND=/bin/sleep infinity\\n' > sleeper.env && \
         printf 'export PORT=\"9000\"\\nMODEL_COMMAND=/nonexistent/model-server --port 9000\\n' > broken && \
         printf 'MODEL_COMMAND=/bin/sleep infinity\\n' > noport && \
         printf 'PORT=1\\n' > .hidden && printf 'PORT=2\\n' > 'a b' && mkdir -p subdir && \
         chown -R abc:abc {DIR}"
    ))?;
    Ok(())
}

fn post(s: &Sandbox, path: &str) -> Result<Reply> {
    let auth = format!(
        "Authorization: Bearer {}",
        s.ok("cat /etc/homelab/api-token")?.trim()
    );
    s.curl("POST", &format!(":5002{path}"), &["-H", &auth])
}

fn model_units(s: &Sandbox) -> Result<String> {
    Ok(
        s.ok("systemctl list-units --all --no-legend --plain 'model@*'")?
            .trim()
            .to_string(),
    )
}

fn models_are_the_config_files(s: &Sandbox) -> Result<()> {
    setup_models(s)?;
    let r = s.get(":5002/models")?;
    let models = r.expect(200)?["models"]
        .as_array()
        .context("models")?
        .clone();
    let names: Vec<&str> = models
        .iter()
        .filter_map(|m| m["model_name"].as_str())
        .collect();
    ensure_eq!(names, ["broken", "noport", "sleeper.env"]);
    ensure_eq!(models[2]["port"], 8081);
    ensure_eq!(models[0]["port"], 9000);
    ensure!(models[1]["port"].is_null(), "{}", r.body);
    ensure_eq!(models[2]["file_path"], format!("{DIR}/sleeper.env"));
    ensure_eq!(
        s.get(":5002/models/running")?.expect(200)?["running_models"],
        serde_json::json!([])
    );
    Ok(())
}

fn running_models(s: &Sandbox) -> Result<Vec<String>> {
    Ok(
        s.get(":5002/models/running")?.expect(200)?["running_models"]
            .as_array()
            .context("running_models")?
            .iter()
            .filter_map(|m| m.as_str().map(str::to_string))
            .collect(),
    )
}

/// The service keeps its view of the model units from systemd's signals: a model an admin
/// starts or stops directly shows so in `GET /models/running` (asynchronously: a deadline).
fn a_model_started_with_systemctl_is_running(s: &Sandbox) -> Result<()> {
    setup_models(s)?;
    ensure_eq!(running_models(s)?, Vec::<String>::new());
    s.ok("systemctl start model@sleeper.env.service")?;
    wait_for(
        "the model started with systemctl to be running",
        Duration::from_secs(10),
        || Ok(running_models(s)? == ["sleeper.env"]),
    )?;
    s.ok("systemctl stop model@sleeper.env.service")?;
    wait_for(
        "the model stopped with systemctl to leave the running ones",
        Duration::from_secs(10),
        || Ok(running_models(s)?.is_empty()),
    )
}

fn start_restart_stop_a_model_as_abc(s: &Sandbox) -> Result<()> {
    setup_models(s)?;
    let unit = "model@sleeper.env.service";
    let r = post(s, "/models/sleeper.env/start")?;
    ensure_eq!(
        r.expect(200)?["message"],
        "Successfully started model sleeper.env"
    );
    ensure_eq!(s.active_state(unit)?, "active");
    let pid = s.prop(unit, "MainPID")?;
    // The model server runs as its own user, never as abc, with its config in its environment
    // (read by homelab-exec, not by PID 1).
    ensure_eq!(
        s.ok(&format!("ps -o uid=,args= -p {pid}"))?.trim(),
        format!(
            "{} /bin/sleep infinity",
            s.ok("id -u homelab-model")?.trim()
        )
    );
    let environ = s.ok(&format!("tr '\\0' '\\n' < /proc/{pid}/environ"))?;
    ensure!(
        environ.lines().any(|l| l == "PORT=8081"),
        "the config is not in the model's environment: {environ}"
    );
    ensure_eq!(
        s.get(":5002/models/running")?.expect(200)?["running_models"],
        serde_json::json!(["sleeper.env"])
    );
    let status = s.get(":5002/models/sleeper.env")?;
    let json = status.expect(200)?;
    ensure_eq!(json["active_state"], "active");
    ensure_eq!(json["unit"], unit);
    ensure_eq!(json["main_pid"].to_string(), pid);
    ensure!(json["since"].is_string(), "{}", status.body);

    let before = s.prop(unit, "InvocationID")?;
    ensure_eq!(
        post(s, "/models/sleeper.env/restart")?.expect(200)?["message"],
        "Successfully restarted model sleeper.env"
    );
    ensure!(s.prop(unit, "InvocationID")? != before, "not restarted");
    ensure_eq!(
        post(s, "/models/sleeper.env/stop")?.expect(200)?["message"],
        "Successfully stopped model sleeper.env"
    );
    ensure_eq!(s.active_state(unit)?, "inactive");
    ensure_eq!(
        s.get(":5002/models/running")?.expect(200)?["running_models"],
        serde_json::json!([])
    );
    // As abc, systemctl works directly too (polkit); anything else is refused (shutdown group).
    let out = s.as_user(
        "abc",
        &format!("systemctl start {unit} && systemctl is-active {unit} && systemctl stop {unit}"),
    )?;
    ensure!(
        out.status.success(),
        "abc could not start {unit}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = s.as_user("abc", "systemctl start systemd-tmpfiles-clean.service")?;
    ensure!(!out.status.success(), "abc could start another unit");
    // The grant is for model@ units only, and only for abc.
    s.ok("id tester >/dev/null 2>&1 || useradd -m tester")?;
    let out = s.as_user("tester", &format!("systemctl start {unit}"))?;
    ensure!(!out.status.success(), "tester could start a model unit");
    Ok(())
}

fn a_model_that_fails_gets_502_with_the_reason(s: &Sandbox) -> Result<()> {
    setup_models(s)?;
    let r = post(s, "/models/broken/start")?;
    let msg = r.expect_error(502)?;
    ensure!(
        msg.contains("did not start") && msg.contains("model@broken.service"),
        "{msg}"
    );
    // The service is not in systemd-journal: it names the command, and root's journalctl
    // shows why.
    ensure!(
        r.json["journal"].is_null()
            && r.json["journal_command"] == "journalctl -u model@broken.service",
        "the answer does not say where to look: {}",
        r.body
    );
    let log = s.ok("journalctl -u model@broken.service --no-pager -o cat")?;
    ensure!(
        log.contains("/nonexistent/model-server"),
        "the journal does not show why: {log}"
    );
    s.ok("systemctl stop model@broken.service; systemctl reset-failed 'model@*' || true")?;
    Ok(())
}

fn hostile_and_unknown_names_change_nothing(s: &Sandbox) -> Result<()> {
    setup_models(s)?;
    // Over 255 bytes: not a file name (400). A request line over 8 KiB is refused earlier (431).
    let long = "a".repeat(4_096);
    post(s, &format!("/models/{}/start", "a".repeat(10_240)))?.expect_error(431)?;
    for name in [
        "*",
        "%3F",
        "..%2Fx",
        "a%2Fb",
        "%0a",
        "%2E%2E",
        ".hidden",
        "a%20b",
        long.as_str(),
        "%zz",
    ] {
        for action in ["start", "stop", "restart", "report"] {
            post(s, &format!("/models/{name}/{action}"))?
                .expect_error(400)
                .with_context(|| format!("{action} {name:.40}"))?;
        }
        s.get(&format!(":5002/models/{name}"))?
            .expect_error(400)
            .with_context(|| format!("GET {name:.40}"))?;
    }
    for name in ["x.service", "missing", "subdir"] {
        post(s, &format!("/models/{name}/start"))?
            .expect_error(404)
            .with_context(|| name.to_string())?;
    }
    s.curl("POST", ":5002/models/sleeper.env/start", &[])?
        .expect_error(401)?;
    s.curl("DELETE", ":5002/models/sleeper.env", &[])?
        .expect_error(405)?;
    s.get(":5002/models/sleeper.env/start")?.expect_error(405)?;
    ensure_eq!(model_units(s)?, "", "model units after bad requests");
    Ok(())
}

/// A name that passes the character rules but is too long for a unit name once escaped (each
/// '-' is 4 bytes): 400 with the reason, for every route, and nothing started.
fn a_name_too_long_as_a_unit_name_is_400(s: &Sandbox) -> Result<()> {
    setup_models(s)?;
    let name = "-".repeat(64);
    s.ok(&format!(
        "cd {DIR} && printf 'MODEL_COMMAND=/bin/sleep infinity\\n' > ./{name} && chown abc:abc ./{name}"
    ))?;
    for action in ["start", "stop", "restart", "report"] {
        let msg = post(s, &format!("/models/{name}/{action}"))?.expect_error(400)?;
        ensure!(msg.contains("too long for a unit name"), "{action}: {msg}");
    }
    s.get(&format!(":5002/models/{name}"))?.expect_error(400)?;
    // The listing leaves it out instead of failing.
    let names = s.get(":5002/models")?;
    ensure!(
        !names.expect(200)?.to_string().contains(&name),
        "{}",
        names.body
    );
    ensure_eq!(model_units(s)?, "", "model units after the requests");
    s.get(":5002/health")?.expect(200)?;
    s.ok(&format!("rm -f {DIR}/{name}"))?;
    Ok(())
}

/// A process of a running model server asks systemd to schedule a power-off and a reboot (and
/// to power off at once): polkit refuses, nothing is scheduled, and it cannot touch abc's state.
fn a_model_server_cannot_schedule_a_power_action(s: &Sandbox) -> Result<()> {
    setup_models(s)?;
    let future = chrono::Utc::now().timestamp() + 3600;
    let timer = s
        .ok(&format!(
            "systemd-escape --template=homelab-shutdown@.timer @{future}"
        ))?
        .trim()
        .to_string();
    let reboot = timer.replacen("homelab-shutdown@", "homelab-reboot@", 1);
    // The model's command tries, and logs each answer to the journal, then serves (sleeps).
    let script = format!(
        "for u in '{timer}' '{reboot}'; do systemctl start \"$u\" 2>&1; echo \"start $u: rc=$?\"; done\n\
         systemctl poweroff 2>&1; echo \"poweroff: rc=$?\"\n\
         touch /var/lib/shutdown-service/schedules.json 2>&1; echo \"touch: rc=$?\"\n\
         id; echo attempts done\n\
         exec sleep infinity\n"
    );
    s.ok(&format!(
        "cat > /usr/local/bin/model-attacker <<'EOS'\n{script}EOS\nchmod 755 /usr/local/bin/model-attacker && \
         printf 'MODEL_COMMAND=/bin/sh /usr/local/bin/model-attacker\\n' > {DIR}/attacker && chown abc:abc {DIR}/attacker"
    ))?;
    post(s, "/models/attacker/start")?.expect(200)?;
    let journal = || {
        s.ok("journalctl -u model@attacker.service --no-pager -o cat")
            .unwrap_or_default()
    };
    wait_for(
        "the model's attempts to finish",
        Duration::from_secs(60),
        || Ok(journal().contains("attempts done")),
    )?;
    let log = journal();
    for u in [&timer, &reboot] {
        ensure!(
            !log.contains(&format!("start {u}: rc=0")),
            "a model server started {u}:\n{log}"
        );
    }
    ensure!(!log.contains("poweroff: rc=0"), "poweroff allowed:\n{log}");
    ensure!(!log.contains("touch: rc=0"), "state writable:\n{log}");
    ensure!(
        log.contains("Interactive authentication required") || log.contains("Access denied"),
        "refused for another reason:\n{log}"
    );
    ensure!(
        log.contains("homelab-model"),
        "not run as homelab-model:\n{log}"
    );
    for u in [&timer, &reboot] {
        ensure_eq!(s.active_state(u)?, "inactive", "{u}");
    }
    ensure_eq!(s.active_state("model@attacker.service")?, "active");
    post(s, "/models/attacker/stop")?.expect(200)?;
    s.ok(&format!("rm -f {DIR}/attacker"))?;
    Ok(())
}

/// A model config that is a symlink to a root-only file (or a FIFO): the API does not offer it,
/// abc starting its unit directly gets a failed unit with a clear journal line, and the file's
/// content is in no process's environment.
fn a_config_symlink_to_a_root_only_file_leaks_nothing(s: &Sandbox) -> Result<()> {
    setup_models(s)?;
    let secret = "WG_PRIVATE_KEY_leak_check_0815";
    s.ok(&format!(
        "(umask 077 && printf 'PrivateKey={secret}\\nMODEL_COMMAND=/bin/sleep infinity\\n' > /etc/homelab/wg-secret) && \
         cd {DIR} && ln -s /etc/homelab/wg-secret leaky && chown -h abc:abc leaky && \
         mkfifo -m 0644 stuck && chown abc:abc stuck"
    ))?;
    ensure_eq!(
        s.ok("stat -c '%U %a' /etc/homelab/wg-secret")?.trim(),
        "root 600",
        "the secret is root-only"
    );
    post(s, "/models/leaky/start")?.expect_error(404)?;
    for name in ["leaky", "stuck"] {
        let unit = format!("model@{name}.service");
        // abc may start model units directly (polkit); the unit must fail, at once, and stay down.
        let t = std::time::Instant::now();
        let _ = s.as_user("abc", &format!("systemctl start {unit}"))?;
        wait_for(&format!("{unit} to fail"), Duration::from_secs(20), || {
            Ok(s.active_state(&unit)? == "failed")
        })?;
        ensure!(
            t.elapsed() < Duration::from_secs(20),
            "{unit} took {:?}",
            t.elapsed()
        );
        ensure_eq!(
            s.prop(&unit, "ExecMainStatus")?,
            "78",
            "{unit}'s exit status"
        );
        let log = s.ok(&format!("journalctl -u {unit} --no-pager -o cat"))?;
        let why = if name == "leaky" {
            "symbolic link"
        } else {
            "not a regular file"
        };
        ensure!(
            log.contains("refusing the environment file") && log.contains(why),
            "no clear journal line for {name}: {log}"
        );
        ensure!(!log.contains(secret), "the secret reached the journal");
        ensure!(
            !s.prop(&unit, "Environment")?.contains(secret),
            "the secret is in the unit's environment"
        );
        s.ok(&format!("systemctl reset-failed {unit}"))?;
    }
    let leaks = s.ok(&format!(
        "grep -l '{secret}' /proc/[0-9]*/environ 2>/dev/null || true"
    ))?;
    ensure_eq!(
        leaks.trim(),
        "",
        "processes with the secret in their environment"
    );
    s.ok(&format!(
        "rm -f {DIR}/leaky {DIR}/stuck /etc/homelab/wg-secret"
    ))?;
    Ok(())
}

fn activity_is_reported_and_survives_a_restart(s: &Sandbox) -> Result<()> {
    setup_models(s)?;
    let r = post(s, "/models/noport/report")?;
    let json = r.expect(200)?;
    ensure_eq!(json["message"], "Activity reported for model noport");
    let stamp = json["timestamp"].as_str().context("timestamp")?.to_string();
    ensure_eq!(
        s.get(":5002/models/active")?.expect(200)?["active_models"],
        serde_json::json!(["noport"])
    );
    s.ok("systemctl restart inference-service.service")?;
    let activity = s.get(":5002/models/activity")?;
    let status = &activity.expect(200)?["activity_status"];
    ensure_eq!(status["noport"]["last_activity"], stamp.as_str());
    ensure_eq!(status["noport"]["is_active"], true);
    ensure_eq!(status["sleeper.env"]["is_active"], false);
    ensure!(activity.json["timestamp"].is_string(), "{}", activity.body);
    ensure_eq!(
        s.get(":5002/models/idle")?.expect(200)?["idle_models"],
        serde_json::json!([])
    );
    Ok(())
}

/// Writes the activity state as the service keeps it (the test's way of letting time pass).
fn write_activity(s: &Sandbox, json: &str) -> Result<()> {
    s.ok(&format!(
        "mkdir -p /var/lib/inference-service && printf '%s' '{json}' > /var/lib/inference-service/activity.json && \
         chown -R abc:abc /var/lib/inference-service"
    ))?;
    Ok(())
}

fn minutes_ago(m: i64) -> String {
    (chrono::Local::now() - chrono::Duration::minutes(m)).to_rfc3339()
}

fn idle_check_stops_idle_models_and_powers_off_via_a_timer(s: &Sandbox) -> Result<()> {
    setup_models(s)?;
    // Models left running by another case would (rightly) keep the machine up.
    s.ok("systemctl stop 'model@*.service'")?;
    ensure_eq!(
        s.active_state("inference-idle-check.timer")?,
        "active",
        "the idle-check timer is enabled with the target"
    );
    s.ok(r#"echo '{"idle_threshold_minutes": 1, "shutdown_check_interval_minutes": 1}' > /etc/homelab/inference-service.json"#)?;
    post(s, "/models/sleeper.env/start")?.expect(200)?;
    post(s, "/models/noport/start")?.expect(200)?;
    // sleeper.env was used 10 minutes ago; noport a moment ago.
    write_activity(
        s,
        &format!(
            r#"{{"last_activity": {{"sleeper.env": "{}", "noport": "{}"}}}}"#,
            minutes_ago(10),
            minutes_ago(0)
        ),
    )?;
    // The timer fires every minute in production; every 5 s here.
    s.ok("mkdir -p /run/systemd/system/inference-idle-check.timer.d && \
          printf '[Timer]\\nOnCalendar=\\nOnCalendar=*:*:0/5\\nAccuracySec=1s\\n' > /run/systemd/system/inference-idle-check.timer.d/fast.conf && \
          systemctl daemon-reload && systemctl restart inference-idle-check.timer")?;
    wait_for(
        "the timer-driven check to stop the idle model",
        Duration::from_secs(40),
        || Ok(s.active_state("model@sleeper.env.service")? == "inactive"),
    )?;
    ensure_eq!(
        s.active_state("model@noport.service")?,
        "active",
        "the busy model"
    );
    let log = s.ok("journalctl -u inference-idle-check --no-pager -o cat")?;
    ensure!(log.contains("stopped model@sleeper.env.service"), "{log}");
    let timers = s.ok("systemctl list-timers --no-legend --plain 'homelab-shutdown@*'")?;
    ensure!(
        !timers.contains("homelab-shutdown@"),
        "power-off scheduled while off by default: {timers}"
    );

    // power_off_when_idle: once every model has been idle for the threshold, a one-off
    // shutdown timer is started (never a direct power-off).
    s.ok(r#"echo '{"idle_threshold_minutes": 1, "shutdown_check_interval_minutes": 1, "power_off_when_idle": true}' > /etc/homelab/inference-service.json"#)?;
    s.ok("systemctl stop model@noport.service")?;
    write_activity(
        s,
        &format!(
            r#"{{"last_activity": {{"noport": "{}"}}, "all_idle_since": "{}"}}"#,
            minutes_ago(5),
            minutes_ago(2)
        ),
    )?;
    wait_for(
        "the timer-driven check to schedule a power-off",
        Duration::from_secs(40),
        || {
            Ok(
                s.ok("systemctl list-timers --no-legend --plain 'homelab-shutdown@*'")?
                    .contains("homelab-shutdown@"),
            )
        },
    )?;
    let status = s.get(":5001/shutdown/status")?;
    ensure_eq!(
        status.expect(200)?["has_shutdown"],
        true,
        "the shutdown service sees it"
    );
    let left = status.json["next_shutdown"]["minutes_from_now"]
        .as_u64()
        .unwrap_or(0);
    ensure!(left >= 1, "power-off too soon: {}", status.body);
    // Scheduled by the shutdown module's one function: it has a state entry, as an API one has.
    ensure!(
        status.json["next_shutdown"]["created_at"].is_string(),
        "the idle power-off bypassed the shutdown module (no created_at): {}",
        status.body
    );
    s.ok(
        "systemctl stop 'homelab-shutdown@*.timer'; rm -f /etc/homelab/inference-service.json; \
          rm -r /run/systemd/system/inference-idle-check.timer.d; systemctl daemon-reload",
    )?;
    Ok(())
}

fn on_demand_model_starts_on_first_request_and_stops_when_idle(s: &Sandbox) -> Result<()> {
    // The model server: our own inference-service binary answering on 127.0.0.1:8091.
    s.ok(&format!(
        r#"echo '{{"auth": {{"enabled": false}}}}' > /home/abc/models/noauth.json && \
           printf 'PORT=8091\nMODEL_COMMAND=/usr/bin/inference-service --listen 127.0.0.1:8091\nHOMELAB_INFERENCE_CONFIG=/home/abc/models/noauth.json\nHOMELAB_IDLE_TIMEOUT=0\n' > {DIR}/web && \
           chown abc:abc {DIR}/web /home/abc/models/noauth.json && \
           mkdir -p /etc/systemd/system/model-proxy@web.socket.d /etc/systemd/system/model@web.service.d /etc/systemd/system/model-proxy@web.service.d && \
           printf '[Socket]\nListenStream=8090\n' > /etc/systemd/system/model-proxy@web.socket.d/port.conf && \
           printf '[Unit]\nStopWhenUnneeded=yes\n' > /etc/systemd/system/model@web.service.d/on-demand.conf && \
           printf '[Service]\nEnvironment=PROXY_EXIT_IDLE_TIME=3s\n' > /etc/systemd/system/model-proxy@web.service.d/idle.conf && \
           systemctl daemon-reload && systemctl start model-proxy@web.socket"#
    ))?;
    ensure_eq!(
        s.active_state("model@web.service")?,
        "inactive",
        "before the first request"
    );
    let r = s.get(":8090/health")?;
    ensure_eq!(
        r.expect(200)?["service"],
        "Inference Model Service",
        "answer through the proxy"
    );
    ensure_eq!(s.active_state("model@web.service")?, "active");
    wait_for(
        "the model to stop when idle",
        Duration::from_secs(30),
        || Ok(s.active_state("model@web.service")? == "inactive"),
    )?;
    ensure_eq!(s.active_state("model-proxy@web.service")?, "inactive");
    ensure_eq!(
        s.active_state("model-proxy@web.socket")?,
        "active",
        "the socket stays"
    );
    s.get(":8090/health")?.expect(200)?;
    ensure_eq!(
        s.active_state("model@web.service")?,
        "active",
        "started again by the next request"
    );
    s.ok("systemctl stop model-proxy@web.socket model-proxy@web.service model@web.service")?;
    Ok(())
}

/// Two models whose units (with a per-model drop-in, as a site would write) run a real server
/// listening on the model's port: list, start, running, restart, stop through curl, and
/// `systemctl is-active` agrees after each.
fn two_listening_models_through_curl(s: &Sandbox) -> Result<()> {
    setup_models(s)?;
    let mut setup = r#"echo '{"auth": {"enabled": false}}' > /home/abc/models/noauth.json && chown abc:abc /home/abc/models/noauth.json"#.to_string();
    for (name, port) in [("alpha.env", 8101), ("beta.env", 8102)] {
        setup.push_str(&format!(
            " && printf 'PORT={port}\\n' > {DIR}/{name} && chown abc:abc {DIR}/{name} && \
             mkdir -p /etc/systemd/system/model@{name}.service.d && \
             printf '[Service]\\nEnvironment=HOMELAB_INFERENCE_CONFIG=/home/abc/models/noauth.json HOMELAB_IDLE_TIMEOUT=0\\nExecStart=\\nExecStart=/usr/bin/homelab-exec --env-file {DIR}/%%I --to-port PORT -- /usr/bin/inference-service --listen\\n' \
               > /etc/systemd/system/model@{name}.service.d/server.conf"
        ));
    }
    s.ok(&format!("{setup} && systemctl daemon-reload"))?;
    let listed = s.get(":5002/models")?;
    let names: Vec<String> = listed.expect(200)?["models"]
        .as_array()
        .context("models")?
        .iter()
        .filter_map(|m| m["model_name"].as_str().map(String::from))
        .collect();
    ensure!(
        names.contains(&"alpha.env".to_string()) && names.contains(&"beta.env".to_string()),
        "{names:?}"
    );
    let is_active = |name: &str| s.active_state(&format!("model@{name}.service"));
    let serves = |port: u16| {
        s.get(&format!(":{port}/health"))
            .map(|r| r.status == 200)
            .unwrap_or(false)
    };
    let running = || -> Result<serde_json::Value> {
        Ok(s.get(":5002/models/running")?.expect(200)?["running_models"].clone())
    };

    post(s, "/models/alpha.env/start")?.expect(200)?;
    ensure_eq!(is_active("alpha.env")?, "active");
    ensure!(serves(8101), "alpha does not answer on its port");
    post(s, "/models/beta.env/start")?.expect(200)?;
    ensure_eq!(is_active("beta.env")?, "active");
    ensure!(serves(8102), "beta does not answer on its port");
    ensure_eq!(running()?, serde_json::json!(["alpha.env", "beta.env"]));
    let pid = s.prop("model@alpha.env.service", "MainPID")?;
    post(s, "/models/alpha.env/restart")?.expect(200)?;
    ensure_eq!(is_active("alpha.env")?, "active");
    ensure!(
        s.prop("model@alpha.env.service", "MainPID")? != pid,
        "alpha was not restarted"
    );
    ensure!(serves(8101), "alpha does not answer after the restart");
    post(s, "/models/alpha.env/stop")?.expect(200)?;
    ensure_eq!(is_active("alpha.env")?, "inactive");
    ensure!(!serves(8101), "alpha still answers after stop");
    ensure_eq!(running()?, serde_json::json!(["beta.env"]));
    post(s, "/models/beta.env/stop")?.expect(200)?;
    ensure_eq!(is_active("beta.env")?, "inactive");
    ensure_eq!(running()?, serde_json::json!([]));
    Ok(())
}
