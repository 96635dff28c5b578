//! The gate's side (`brain-admit`): connect to the coordinator and read its answers until one
//! is final.

use super::protocol::{Answer, MAX_LINE};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Connects and calls `on_answer` with each answer until one is final (admitted or refused),
/// which it returns. While the coordinator is away (restarting) it connects again every second,
/// and the coordinator answers anew.
pub fn ask(socket: &Path, mut on_answer: impl FnMut(&Answer)) -> Answer {
    let mut announced = false;
    loop {
        match UnixStream::connect(socket) {
            Ok(stream) => {
                // The coordinator's lines are short; a longer one is cut, never buffered whole.
                let mut lines = BufReader::new(stream.take(1 << 20));
                let mut line = String::new();
                loop {
                    line.clear();
                    match lines.read_line(&mut line) {
                        Ok(n) if n > 0 && line.len() <= MAX_LINE => {}
                        _ => break,
                    }
                    let Some(answer) = Answer::parse(&line) else {
                        continue;
                    };
                    on_answer(&answer);
                    if answer.is_final() {
                        return answer;
                    }
                }
            }
            Err(e) if !announced => {
                crate::log_notice!("waiting for the coordinator at {}: {e}", socket.display());
                announced = true;
            }
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn a_gate_reads_until_a_final_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admission.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            // First connection: queued, then the coordinator goes away (a restart).
            let (s, _) = listener.accept().unwrap();
            assert!(Answer::Queued("queued, position 2 of 2: behind x".into()).send(&s));
            drop(s);
            // The gate comes back: queued, then admitted.
            let (s, _) = listener.accept().unwrap();
            assert!(
                Answer::Queued(
                    "queued, position 1 of 1: 2 of MAX_CONCURRENT_EXPERIMENTS=2 running".into()
                )
                .send(&s)
            );
            assert!(Answer::Admitted.send(&s));
        });
        let mut seen = Vec::new();
        let last = ask(&path, |a| seen.push(a.clone()));
        server.join().unwrap();
        assert_eq!(last, Answer::Admitted);
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(matches!(&seen[1], Answer::Queued(w) if w.contains("position 1 of 1")));
    }

    #[test]
    fn a_long_line_is_skipped_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admission.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            use std::io::Write;
            s.write_all(&[b'W'; MAX_LINE + 10]).unwrap();
            s.write_all(b"\n").unwrap();
            drop(s);
            let (s, _) = listener.accept().unwrap();
            assert!(Answer::Refused("no".into()).send(&s));
        });
        let last = ask(&path, |_| {});
        server.join().unwrap();
        assert_eq!(last, Answer::Refused("no".into()));
    }
}
