//! Issue 4 (in part): the inference service's model management on a booted systemd.

use crate::ensure_eq;
use crate::harness::{Group, Reply, Sandbox};
use anyhow::{Context, Result, ensure};

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
            "hostile_and_unknown_names_change_nothing",
            hostile_and_unknown_names_change_nothing,
        ),
        (
            "activity_is_reported_and_survives_a_restart",
            activity_is_reported_and_survives_a_restart,
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
    ensure_eq!(
        s.ok(&format!("ps -o user=,args= -p {pid}"))?.trim(),
        "abc      /bin/sleep infinity"
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
    let journal = r.json["journal"].as_array().context("no journal lines")?;
    ensure!(
        journal.iter().any(|l| l
            .as_str()
            .unwrap_or_default()
            .contains("/nonexistent/model-server")),
        "journal lines do not show why: {}",
        r.body
    );
    s.ok("systemctl stop model@broken.service; systemctl reset-failed 'model@*' || true")?;
    Ok(())
}

fn hostile_and_unknown_names_change_nothing(s: &Sandbox) -> Result<()> {
    setup_models(s)?;
    let long = "a".repeat(10_240);
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
