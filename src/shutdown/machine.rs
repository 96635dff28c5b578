//! What the schedules read of the machine itself, its clock and its RTC wake alarm, behind two
//! small traits: the gate and the service use the real ones, tests their own (no real waits).

use super::wake;
use std::time::Duration;

/// The time, and waiting for it to pass.
pub trait Clock: Send + Sync {
    /// Seconds since the epoch.
    fn now(&self) -> i64;
    /// Waits `d` (the gate between two looks at the inhibitors).
    fn sleep(&self, d: Duration);
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        chrono::Local::now().timestamp()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// The RTC wake alarm, as abc reads it (only root writes it).
pub trait Rtc: Send + Sync {
    /// The machine has an RTC whose alarm can wake it.
    fn present(&self) -> bool;
    /// The alarm now (seconds since the epoch), `None` when none is armed.
    fn alarm(&self) -> Option<i64>;
}

/// The machine's RTC (`/sys/class/rtc/rtc0/wakealarm`).
pub struct SystemRtc;

impl Rtc for SystemRtc {
    fn present(&self) -> bool {
        wake::rtc_present()
    }
    fn alarm(&self) -> Option<i64> {
        super::rtc::alarm()
    }
}
