//! The e2e harness: boots a real systemd per group of cases (tests/e2e/sandbox.sh), runs the cases
//! against it from outside as a user would, prints the container's journal for a failed case and
//! always tears the container down.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long one command inside the container may run (seconds, for `timeout`).
const CMD_TIMEOUT: &str = "180";

pub type CaseFn = fn(&Sandbox) -> Result<()>;

/// A named list of cases that share one freshly booted container.
pub struct Group {
    pub name: &'static str,
    pub cases: &'static [(&'static str, CaseFn)],
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn sandbox_script() -> PathBuf {
    repo_root().join("tests/e2e/sandbox.sh")
}

/// A booted container with the project installed, in its own network namespace.
pub struct Sandbox {
    pub dir: PathBuf,
    pub netns: String,
}

impl Sandbox {
    /// Fresh copy of the cached root file system, project installed, booted, units enabled as a
    /// user would after `make install`.
    pub fn boot(tag: &str) -> Result<Sandbox> {
        let base =
            std::env::var("HOMELAB_E2E_DIR").unwrap_or_else(|_| "/var/tmp/homelab-e2e".into());
        let dir = PathBuf::from(base).join(format!("{tag}-{}", std::process::id()));
        let netns = format!("hle2e-{tag}-{}", std::process::id());
        let _ = std::fs::remove_dir_all(&dir);
        script(&["create", path_str(&dir)?]).context("creating the container")?;
        let sandbox = Sandbox { dir, netns };
        sandbox.start()?;
        // What a package's postinst and the README's install steps do.
        sandbox.ok("systemd-sysusers && systemd-tmpfiles --create && systemctl daemon-reload && systemctl enable --now home-lab-services.target")?;
        Ok(sandbox)
    }

    /// Fresh copy of the package flavour of the root file system (man-db and
    /// prometheus-node-exporter too), with nothing of ours installed: the package group installs
    /// the .deb into it.
    pub fn boot_clean(tag: &str) -> Result<Sandbox> {
        let base =
            std::env::var("HOMELAB_E2E_DIR").unwrap_or_else(|_| "/var/tmp/homelab-e2e".into());
        let dir = PathBuf::from(base).join(format!("{tag}-{}", std::process::id()));
        let netns = format!("hle2e-{tag}-{}", std::process::id());
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new(sandbox_script())
            .args(["create", path_str(&dir)?])
            .env("HOMELAB_ROOTFS_FLAVOUR", "package")
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "sandbox.sh create (package flavour) failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let sandbox = Sandbox { dir, netns };
        sandbox.start()?;
        Ok(sandbox)
    }

    /// Boots (again) the container's file system, as after a power-off.
    pub fn start(&self) -> Result<()> {
        script(&["boot", path_str(&self.dir)?, &self.netns]).context("booting the container")?;
        Ok(())
    }

    pub fn stop(&self) {
        let _ = script(&["stop", path_str(&self.dir).unwrap_or_default()]);
    }

    /// The nspawn process is gone (the container powered off).
    pub fn is_down(&self) -> bool {
        let pid =
            std::fs::read_to_string(self.dir.with_extension("nspawn-pid")).unwrap_or_default();
        let pid = pid.trim();
        pid.is_empty() || !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid)
    }

    /// Runs a shell command inside the container as root (see [`Sandbox::exec`] for its time limit).
    pub fn sh(&self, cmd: &str) -> Result<Output> {
        self.exec(&["sh", "-c", cmd])
    }

    /// Runs `argv` inside the container. A command still running after [`CMD_TIMEOUT`] is
    /// killed and fails its case, so that a hang (a start job that never ends) cannot stall the
    /// suite until CI's own limit.
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        let mut args = vec![
            "exec",
            path_str(&self.dir)?,
            "timeout",
            "-k",
            "5",
            CMD_TIMEOUT,
        ];
        args.extend_from_slice(argv);
        Command::new(sandbox_script())
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {argv:?} in the container"))
    }

    /// Runs a shell command inside; fails with its output unless it exits 0. Returns stdout.
    pub fn ok(&self, cmd: &str) -> Result<String> {
        let out = self.sh(cmd)?;
        if !out.status.success() {
            bail!(
                "`{cmd}` failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a command as `user` inside the container (`runuser`); returns the output whatever it is.
    pub fn as_user(&self, user: &str, cmd: &str) -> Result<Output> {
        self.exec(&["runuser", "-u", user, "--", "sh", "-c", cmd])
    }

    /// `systemctl show -p PROP --value UNIT`.
    pub fn prop(&self, unit: &str, prop: &str) -> Result<String> {
        Ok(self
            .ok(&format!("systemctl show -p {prop} --value '{unit}'"))?
            .trim()
            .to_string())
    }

    pub fn active_state(&self, unit: &str) -> Result<String> {
        self.prop(unit, "ActiveState")
    }

    /// An HTTP request with curl from the host, in the container's network namespace.
    pub fn curl(&self, method: &str, url_path: &str, extra: &[&str]) -> Result<Reply> {
        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            self.netns.clone(),
            "curl".into(),
            "-sS".into(),
            "--max-time".into(),
            "20".into(),
            "-X".into(),
            method.into(),
            "-o".into(),
            "-".into(),
            "-w".into(),
            "\n%{http_code}".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(format!("http://127.0.0.1{url_path}"));
        let out = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .context("running curl")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
        let status: u16 = code.trim().parse().unwrap_or(0);
        if status == 0 {
            bail!(
                "curl {method} {url_path} got no response: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let json = serde_json::from_str(body).unwrap_or(Value::Null);
        Ok(Reply {
            status,
            body: body.to_string(),
            json,
        })
    }

    pub fn get(&self, url_path: &str) -> Result<Reply> {
        self.curl("GET", url_path, &[])
    }

    /// Prints the end of the container's journal, for a failed case.
    pub fn dump_journal(&self) {
        match self.sh("journalctl -b --no-pager -n 120 -o short-monotonic") {
            Ok(out) => eprintln!(
                "---- container journal (last 120 lines) ----\n{}----",
                String::from_utf8_lossy(&out.stdout)
            ),
            Err(e) => eprintln!("(no journal: {e})"),
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop();
        if std::env::var_os("HOMELAB_E2E_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
            for ext in ["console", "nspawn-pid", "netns"] {
                let _ = std::fs::remove_file(self.dir.with_extension(ext));
            }
        }
    }
}

fn is_zombie(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 path")
}

fn script(args: &[&str]) -> Result<String> {
    let out = Command::new(sandbox_script())
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "sandbox.sh {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An HTTP reply: status, raw body and the body parsed as JSON (Null when it is not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub json: Value,
}

impl Reply {
    /// Fails unless the status is `status` and the body is a JSON object.
    pub fn expect(&self, status: u16) -> Result<&Value> {
        if self.status != status || !self.json.is_object() {
            bail!(
                "expected HTTP {status} with a JSON object, got {}: {}",
                self.status,
                self.body
            );
        }
        Ok(&self.json)
    }

    /// Fails unless this is a JSON error `{"status":"error","message":...}` with `status`.
    pub fn expect_error(&self, status: u16) -> Result<String> {
        let json = self.expect(status)?;
        let message = json["message"].as_str().unwrap_or_default();
        if json["status"] != "error" || message.is_empty() {
            bail!("expected a JSON error with a message, got {}", self.body);
        }
        Ok(message.to_string())
    }
}

/// Polls `cond` every 100 ms until it holds or `limit` passes; the error names what was awaited.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = Instant::now();
    loop {
        if cond()? {
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Samples `cond` every 200 ms for `period`: an invariant that must hold throughout (nothing
/// restarts, nothing more starts), not a wait; fails at the first sample where it does not.
pub fn holds_for(
    what: &str,
    period: Duration,
    mut cond: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < period {
        if !cond()? {
            bail!("{what} stopped holding after {:?}", start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// `ensure!` with both values in the message.
#[macro_export]
macro_rules! ensure_eq {
    ($left:expr, $right:expr $(,)?) => {
        match (&$left, &$right) {
            (l, r) => anyhow::ensure!(l == r, "{} == {} failed: {:?} != {:?}", stringify!($left), stringify!($right), l, r),
        }
    };
    ($left:expr, $right:expr, $($arg:tt)+) => {
        match (&$left, &$right) {
            (l, r) => anyhow::ensure!(l == r, "{}: {:?} != {:?}", format!($($arg)+), l, r),
        }
    };
}

/// The Debian releases the suite runs on, each with its own systemd: bookworm (systemd 252) and
/// trixie (systemd 257). `HOMELAB_E2E_SUITES="bookworm"` runs one.
const SUITES: &str = "bookworm trixie";

/// Runs the groups (all, or those named on the command line) on each Debian release in turn,
/// prints a summary per release, returns the exit code.
pub fn run(groups: &[Group]) -> std::process::ExitCode {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let suites = std::env::var("HOMELAB_E2E_SUITES").unwrap_or_else(|_| SUITES.to_string());
    let started = Instant::now();
    let (mut passed, mut failed) = (0usize, Vec::new());
    let mut summary = Vec::new();
    for suite in suites.split_whitespace() {
        // SAFETY: the suite runs on this one thread; the variable is read by sandbox.sh, which
        // every container command goes through.
        unsafe { std::env::set_var("HOMELAB_SUITE", suite) };
        let t = Instant::now();
        let (p, f) = match preflight() {
            Ok(()) => run_suite(suite, groups, &filter),
            Err(e) => {
                eprintln!("e2e: cannot run on {suite}: {e:#}");
                (0, vec![format!("{suite}: prerequisites")])
            }
        };
        summary.push(format!(
            "  {suite:<9} {p} passed, {} failed, {:.0}s",
            f.len(),
            t.elapsed().as_secs_f64()
        ));
        passed += p;
        failed.extend(f);
    }
    eprintln!(
        "e2e took {:.0}s\n{}",
        started.elapsed().as_secs_f64(),
        summary.join("\n")
    );
    if !failed.is_empty() {
        eprintln!("failed cases:\n  {}", failed.join("\n  "));
    }
    println!("{passed} passed, {} failed", failed.len());
    if failed.is_empty() && passed > 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// Groups whose container has nothing of ours installed (see [`Sandbox::boot_clean`]).
const CLEAN_GROUPS: &[&str] = &["package"];

/// Runs the groups on one release: the cases passed and the names of those that failed.
fn run_suite(suite: &str, groups: &[Group], filter: &[String]) -> (usize, Vec<String>) {
    let (mut passed, mut failed) = (0usize, Vec::new());
    for group in groups {
        let cases: Vec<_> = group
            .cases
            .iter()
            .filter(|(name, _)| {
                filter.is_empty()
                    || filter
                        .iter()
                        .any(|f| group.name.contains(f.as_str()) || name.contains(f.as_str()))
            })
            .collect();
        if cases.is_empty() {
            continue;
        }
        let label = format!("{suite}/{}", group.name);
        eprintln!(
            "== {label} ({} cases): booting a fresh container",
            cases.len()
        );
        let boot_started = Instant::now();
        // The package group starts from a system without the project (it installs the .deb).
        let booted = if CLEAN_GROUPS.contains(&group.name) {
            Sandbox::boot_clean(group.name)
        } else {
            Sandbox::boot(group.name)
        };
        let sandbox = match booted {
            Ok(s) => s,
            Err(e) => {
                eprintln!("FAILED {label}: the container did not come up: {e:#}");
                failed.extend(cases.iter().map(|(n, _)| format!("{label}::{n}")));
                continue;
            }
        };
        eprintln!(
            "   booted and installed in {:.1}s",
            boot_started.elapsed().as_secs_f64()
        );
        for (name, case) in cases {
            let t = Instant::now();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(&sandbox)))
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the case panicked")));
            match result {
                Ok(()) => {
                    passed += 1;
                    eprintln!("ok     {label}::{name} ({:.1}s)", t.elapsed().as_secs_f64());
                }
                Err(e) => {
                    eprintln!(
                        "FAILED {label}::{name} ({:.1}s): {e:#}",
                        t.elapsed().as_secs_f64()
                    );
                    if !sandbox.is_down() {
                        sandbox.dump_journal();
                    }
                    failed.push(format!("{label}::{name}"));
                }
            }
        }
    }
    (passed, failed)
}

/// Root and the host tools; a missing prerequisite is a failure, never a skip.
fn preflight() -> Result<()> {
    if !nix_is_root() {
        bail!("the e2e suite boots systemd-nspawn containers and must run as root");
    }
    script(&["prereqs"])?;
    script(&["rootfs"])?;
    Ok(())
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
