//! The admission protocol, the one place that knows its bytes: the coordinator writes an
//! [`Answer`] per line and the gate parses each line back (it sends nothing: who it speaks for
//! comes from the kernel). A queued gate shows its [`QueuedStatus`] as its unit's status text,
//! which `brainctl status` parses back too.
//!
//! The lines: `OK` (admitted: the gate `exec`s the experiment), `WAIT <status>` (queued, with
//! the status to show) and `REFUSE <why>` (the gate exits with [`super::EXIT_REFUSED`]).

use std::io::Write;

/// The longest line a gate accepts; a longer one is skipped, never buffered whole.
pub const MAX_LINE: usize = 4096;

const ADMITTED: &str = "OK";
const QUEUED: &str = "WAIT ";
const REFUSED: &str = "REFUSE ";

/// What the coordinator answers a gate.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    Admitted,
    /// Queued; the text says where and why (the gate shows it as its unit's status).
    Queued(String),
    Refused(String),
}

impl Answer {
    /// The answer as one line, newline included.
    pub fn line(&self) -> String {
        // A reason never breaks the line: a newline in it would start another answer.
        let one_line = |s: &str| s.replace(['\n', '\r'], " ");
        match self {
            Answer::Admitted => format!("{ADMITTED}\n"),
            Answer::Queued(status) => format!("{QUEUED}{}\n", one_line(status)),
            Answer::Refused(why) => format!("{REFUSED}{}\n", one_line(why)),
        }
    }

    /// Writes the answer; false when the peer is gone or does not read (the coordinator's
    /// sockets are non-blocking, so a gate that never reads cannot stall it).
    pub fn send(&self, mut to: impl Write) -> bool {
        to.write_all(self.line().as_bytes()).is_ok()
    }

    /// One line as a gate reads it (with or without its newline); `None` for anything else.
    pub fn parse(line: &str) -> Option<Answer> {
        let line = line.trim_end_matches('\n');
        if line == ADMITTED {
            return Some(Answer::Admitted);
        }
        if let Some(status) = line.strip_prefix(QUEUED) {
            return Some(Answer::Queued(status.to_string()));
        }
        line.strip_prefix(REFUSED)
            .map(|why| Answer::Refused(why.to_string()))
    }

    /// Final answers end the conversation; a queued gate keeps reading.
    pub fn is_final(&self) -> bool {
        !matches!(self, Answer::Queued(_))
    }
}

/// A queued experiment's status (its unit's `StatusText`, which `systemctl status` shows):
/// `queued, position P of N: why`.
#[derive(Clone, Debug, PartialEq)]
pub struct QueuedStatus {
    /// Its place in the queue, 1 first.
    pub position: u32,
    pub of: u32,
    pub why: String,
}

impl std::fmt::Display for QueuedStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "queued, position {} of {}: {}",
            self.position, self.of, self.why
        )
    }
}

impl QueuedStatus {
    /// A status written by [`QueuedStatus`]'s `Display`; `None` for any other text.
    pub fn parse(text: &str) -> Option<QueuedStatus> {
        let rest = text.strip_prefix("queued, position ")?;
        let (position, rest) = rest.split_once(" of ")?;
        let (of, why) = rest.split_once(": ")?;
        Some(QueuedStatus {
            position: position.parse().ok()?,
            of: of.parse().ok()?,
            why: why.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip() {
        for answer in [
            Answer::Admitted,
            Answer::Queued("queued, position 1 of 2: x".into()),
            Answer::Refused("too big".into()),
        ] {
            let line = answer.line();
            assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
            assert_eq!(Answer::parse(&line), Some(answer));
        }
        assert_eq!(Answer::Admitted.line(), "OK\n");
        assert_eq!(
            Answer::parse("REFUSE too big"),
            Some(Answer::Refused("too big".into()))
        );
        assert_eq!(Answer::parse("HELLO"), None);
        assert_eq!(Answer::parse("OK then"), None);
    }

    #[test]
    fn a_reason_never_breaks_the_line() {
        let line = Answer::Refused("bad\nOK".into()).line();
        assert_eq!(line, "REFUSE bad OK\n");
    }

    #[test]
    fn only_queued_answers_keep_the_gate_reading() {
        assert!(Answer::Admitted.is_final());
        assert!(Answer::Refused(String::new()).is_final());
        assert!(!Answer::Queued(String::new()).is_final());
    }

    #[test]
    fn queued_status_round_trips() {
        let status = QueuedStatus {
            position: 2,
            of: 3,
            why: "behind brain-experiment@a.service".into(),
        };
        let text = status.to_string();
        assert_eq!(
            text,
            "queued, position 2 of 3: behind brain-experiment@a.service"
        );
        assert_eq!(QueuedStatus::parse(&text), Some(status));
        assert_eq!(QueuedStatus::parse("running"), None);
        assert_eq!(QueuedStatus::parse(""), None);
    }
}
