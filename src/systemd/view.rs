//! A running service's view of its own units, kept current from systemd's signals, so that a read
//! costs no D-Bus round trip.
//!
//! [`UnitView::watch`] starts one thread that owns the order of everything the connection
//! receives: it subscribes, adds match rules for `PropertiesChanged` of units and the manager's
//! `UnitNew`, `UnitRemoved` and `Reloading`, and only then lists the units, all as messages whose
//! replies it reads from the same stream as the signals. The bus delivers a peer's messages in
//! the order they were sent, so every signal after the listing's reply is newer than the
//! listing, and the map applied in arrival order is systemd's state. Until that first listing
//! (and when the thread loses the bus) [`UnitView::units`] asks systemd instead, so a view never
//! answers stale.

use super::{Bus, Prop, ServiceState, Systemd, SystemdError, UnitRow};
use crate::log_err;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

/// One unit of the view: its listing row and, where systemd has them, the timer's next elapse
/// and when the unit last became active (microseconds since the epoch).
#[derive(Clone, Debug, PartialEq)]
pub struct ViewUnit {
    pub row: UnitRow,
    pub next_elapse_usec: Option<u64>,
    pub active_enter_usec: Option<u64>,
}

impl ViewUnit {
    fn new(row: UnitRow) -> ViewUnit {
        ViewUnit {
            row,
            next_elapse_usec: None,
            active_enter_usec: None,
        }
    }
}

/// A signal of systemd's, decoded, as [`Units::apply`] takes it.
#[derive(Debug)]
pub enum Signal {
    /// A unit was loaded.
    UnitNew { name: String, path: OwnedObjectPath },
    /// A unit was unloaded (garbage-collected).
    UnitRemoved { name: String },
    /// `PropertiesChanged` of the unit at `path`: new values, and the names of properties
    /// whose new value was not sent.
    Changed {
        path: String,
        values: Vec<(Prop, OwnedValue)>,
        invalidated: Vec<Prop>,
    },
}

/// The pure part: the units matching some patterns, by name, and what a signal does to them.
#[derive(Debug, Default)]
pub struct Units {
    patterns: Vec<String>,
    by_name: BTreeMap<String, ViewUnit>,
    by_path: HashMap<String, String>,
}

impl Units {
    pub fn new(patterns: &[&str]) -> Units {
        Units {
            patterns: patterns.iter().map(|p| p.to_string()).collect(),
            ..Units::default()
        }
    }

    /// How many units it holds.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn is_ours(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| glob(p, name))
    }

    /// Replaces everything with a full listing.
    pub fn reset(&mut self, rows: Vec<UnitRow>) {
        self.by_name.clear();
        self.by_path.clear();
        for row in rows {
            self.put(row);
        }
    }

    /// Puts a listed row in place of what we had (keeping the properties we had read).
    pub fn put(&mut self, row: UnitRow) {
        if !self.is_ours(&row.name) {
            return;
        }
        self.by_path
            .insert(row.path.as_str().to_string(), row.name.clone());
        match self.by_name.get_mut(&row.name) {
            Some(u) => u.row = row,
            None => {
                self.by_name.insert(row.name.clone(), ViewUnit::new(row));
            }
        }
    }

    pub fn remove(&mut self, name: &str) {
        if let Some(u) = self.by_name.remove(name) {
            self.by_path.remove(u.row.path.as_str());
        }
    }

    /// Stores the properties read for `name`.
    pub fn set_state(&mut self, name: &str, state: &ServiceState) {
        if let Some(u) = self.by_name.get_mut(name) {
            if let Some(t) = state.next_elapse_usec_realtime {
                u.next_elapse_usec = Some(t);
            }
            if let Some(t) = state.active_enter_timestamp {
                u.active_enter_usec = Some(t);
            }
        }
    }

    /// Applies one signal; returns the name of a unit of ours that must be read again (new, or a
    /// property we keep was invalidated without its value).
    pub fn apply(&mut self, signal: Signal) -> Option<String> {
        match signal {
            Signal::UnitNew { name, path } => {
                if !self.is_ours(&name) || self.by_name.contains_key(&name) {
                    return None;
                }
                // What a unit is when it has just been loaded; the listing asked for next
                // replaces it, and its state changes come as PropertiesChanged.
                let mut row = UnitRow::new(&name, "inactive", "dead");
                row.path = path;
                self.put(row);
                Some(name)
            }
            Signal::UnitRemoved { name } => {
                self.remove(&name);
                None
            }
            Signal::Changed {
                path,
                values,
                invalidated,
            } => {
                let name = self.by_path.get(&path)?.clone();
                let u = self.by_name.get_mut(&name)?;
                for (prop, value) in values {
                    let mut s = ServiceState::default();
                    s.set(prop, value);
                    match prop {
                        Prop::ActiveState => {
                            if let Some(v) = s.active_state {
                                u.row.active_state = v;
                            }
                        }
                        Prop::SubState => {
                            if let Some(v) = s.sub_state {
                                u.row.sub_state = v;
                            }
                        }
                        Prop::NextElapseUSecRealtime => {
                            u.next_elapse_usec = s.next_elapse_usec_realtime
                        }
                        Prop::ActiveEnterTimestamp => {
                            u.active_enter_usec = s.active_enter_timestamp
                        }
                        _ => {}
                    }
                }
                (!invalidated.is_empty()).then_some(name)
            }
        }
    }

    /// The units matching `patterns`, by name.
    pub fn matching(&self, patterns: &[&str]) -> Vec<ViewUnit> {
        self.by_name
            .values()
            .filter(|u| patterns.iter().any(|p| glob(p, &u.row.name)))
            .cloned()
            .collect()
    }
}

/// Shell-style matching of unit names, as systemd matches `ListUnitsByPatterns` patterns: `*`
/// is any run of characters, `?` one character (we use no `[...]` classes).
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

#[derive(Debug, Default)]
pub(super) struct Shared {
    /// The map follows systemd: the first listing is in and the thread has the bus.
    pub(super) live: bool,
    pub(super) units: Units,
    /// Serials of [`UnitView::sync`]'s pings still out, and of those whose reply the thread saw.
    pub(super) wanted: HashSet<u32>,
    pub(super) barriers: HashSet<u32>,
}

/// The view a service holds (see the module's doc).
pub struct UnitView {
    pub(super) patterns: Vec<&'static str>,
    shared: Mutex<Shared>,
    pub(super) changed: Condvar,
    pub(super) bus: Mutex<Option<Bus>>,
}

/// The properties a view keeps beside a unit's row, read at listing.
pub(super) fn extra_props(name: &str) -> &'static [Prop] {
    if name.ends_with(".timer") {
        &[Prop::NextElapseUSecRealtime]
    } else {
        &[Prop::ActiveEnterTimestamp]
    }
}

/// How many property reads the thread keeps in flight (see [`Bus::states`]).
pub(super) const PIPELINE_WINDOW: usize = 64;

/// How long a mutating request waits for the view to have seen the end of its job.
const SYNC_TIMEOUT: Duration = Duration::from_secs(5);

impl UnitView {
    /// A view of the units matching `patterns`; it asks systemd on every read until
    /// [`UnitView::watch`] has made it live.
    pub fn new(patterns: &[&'static str]) -> Arc<UnitView> {
        Arc::new(UnitView {
            patterns: patterns.to_vec(),
            shared: Mutex::new(Shared {
                units: Units::new(patterns),
                ..Shared::default()
            }),
            changed: Condvar::new(),
            bus: Mutex::new(None),
        })
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_live(&self) -> bool {
        self.lock().live
    }

    /// The units matching `patterns` (a subset of the view's), with the timers' next elapse and
    /// the units' last activation: from memory when the view is live, else from systemd (one
    /// listing and one batch of properties for the units that are up).
    pub fn units(
        &self,
        sd: &dyn Systemd,
        patterns: &[&str],
    ) -> Result<Vec<ViewUnit>, SystemdError> {
        {
            let shared = self.lock();
            if shared.live {
                return Ok(shared.units.matching(patterns));
            }
        }
        let rows = sd.list_units(patterns)?;
        let up: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].is_up()).collect();
        let requests: Vec<(&OwnedObjectPath, &[Prop])> = up
            .iter()
            .map(|&i| (&rows[i].path, extra_props(&rows[i].name)))
            .collect();
        let states = if requests.is_empty() {
            Vec::new()
        } else {
            sd.states(&requests)?
        };
        let mut out: Vec<ViewUnit> = rows.into_iter().map(ViewUnit::new).collect();
        for (i, s) in up.into_iter().zip(states) {
            out[i].next_elapse_usec = s.next_elapse_usec_realtime;
            out[i].active_enter_usec = s.active_enter_timestamp;
        }
        Ok(out)
    }

    /// After a job of ours ended: returns once the view has applied every signal systemd sent
    /// before it (a ping to systemd, whose reply comes after them, seen by the thread), so the
    /// answer to the request and the next read agree. A no-op while the view is not live.
    pub fn sync(&self) {
        let Some(bus) = self.bus.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return;
        };
        if !self.is_live() {
            return;
        }
        let serial = match self.ping(&bus) {
            Ok(s) => s,
            Err(e) => {
                log_err!("cannot sync the view of units: {e}; reading from systemd");
                self.lock().live = false;
                return;
            }
        };
        let shared = self.lock();
        let (mut shared, timeout) = self
            .changed
            .wait_timeout_while(shared, SYNC_TIMEOUT, |s| {
                s.live && !s.barriers.contains(&serial)
            })
            .unwrap_or_else(|e| e.into_inner());
        shared.barriers.remove(&serial);
        shared.wanted.remove(&serial);
        if timeout.timed_out() {
            log_err!(
                "the view of units did not catch up within {SYNC_TIMEOUT:?}; reading from systemd"
            );
            shared.live = false;
        }
    }
}

impl UnitView {
    /// Sends `org.freedesktop.DBus.Peer.Ping` to systemd without waiting for it, its serial
    /// registered first so that the thread can tell its reply; returns the serial.
    fn ping(&self, bus: &Bus) -> Result<u32, SystemdError> {
        let conn = bus.conn()?;
        let msg = zbus::Message::method_call(super::names::SYSTEMD_PATH, "Ping")?
            .destination(super::names::SYSTEMD)?
            .interface("org.freedesktop.DBus.Peer")?
            .build(&())?;
        let serial = msg.primary_header().serial_num().get();
        self.lock().wanted.insert(serial);
        if let Err(e) = conn.send(&msg) {
            self.lock().wanted.remove(&serial);
            return Err(e.into());
        }
        Ok(serial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::zvariant::Value;

    fn v(x: impl Into<Value<'static>>) -> OwnedValue {
        OwnedValue::try_from(x.into()).unwrap()
    }

    const TIMERS: &[&str] = &["homelab-shutdown@*.timer", "homelab-reboot@*.timer"];

    #[test]
    fn globs_match_as_systemd_patterns() {
        assert!(glob("homelab-shutdown@*.timer", "homelab-shutdown@x.timer"));
        assert!(glob("model@*.service", "model@a.b.service"));
        assert!(!glob("model@*.service", "model@a.socket"));
        assert!(!glob("model@*.service", "xmodel@a.service"));
        assert!(glob("a?c", "abc") && !glob("a?c", "ac"));
        assert!(glob("*", "") && glob("**x", "yx"));
    }

    #[test]
    fn signals_move_the_map_and_ignore_other_units() {
        let mut u = Units::new(TIMERS);
        let a = UnitRow::new("homelab-shutdown@a.timer", "active", "waiting");
        let path = a.path.as_str().to_string();
        u.reset(vec![
            a,
            UnitRow::new("unrelated.timer", "active", "waiting"),
        ]);
        assert_eq!(u.matching(TIMERS).len(), 1, "only ours are kept");
        // stopped behind the service's back
        assert_eq!(
            u.apply(Signal::Changed {
                path: path.clone(),
                values: vec![
                    (Prop::ActiveState, v("inactive")),
                    (Prop::SubState, v("dead")),
                    (Prop::NextElapseUSecRealtime, v(0u64)),
                ],
                invalidated: vec![],
            }),
            None
        );
        let now = &u.matching(TIMERS)[0];
        assert_eq!(
            (now.row.active_state.as_str(), now.row.sub_state.as_str()),
            ("inactive", "dead")
        );
        assert_eq!(now.next_elapse_usec, Some(0));
        // a signal for a unit that is not ours changes nothing
        let other = UnitRow::new("other.timer", "active", "waiting").path;
        assert_eq!(
            u.apply(Signal::Changed {
                path: other.as_str().into(),
                values: vec![(Prop::ActiveState, v("failed"))],
                invalidated: vec![],
            }),
            None
        );
        // garbage-collected
        u.apply(Signal::UnitRemoved {
            name: "homelab-shutdown@a.timer".into(),
        });
        assert!(u.matching(TIMERS).is_empty());
    }

    #[test]
    fn new_units_of_ours_are_read_and_then_follow_their_signals() {
        let mut u = Units::new(&["model@*.service"]);
        let row = UnitRow::new("model@x.service", "inactive", "dead");
        assert_eq!(
            u.apply(Signal::UnitNew {
                name: "model@x.service".into(),
                path: row.path.clone(),
            }),
            Some("model@x.service".to_string()),
            "a new unit of ours is listed again"
        );
        assert_eq!(
            u.apply(Signal::UnitNew {
                name: "sshd.service".into(),
                path: UnitRow::new("sshd.service", "", "").path,
            }),
            None
        );
        u.apply(Signal::Changed {
            path: row.path.as_str().into(),
            values: vec![
                (Prop::ActiveState, v("active")),
                (Prop::SubState, v("running")),
                (Prop::ActiveEnterTimestamp, v(1_700_000_000_000_000u64)),
            ],
            invalidated: vec![],
        });
        let m = &u.matching(&["model@*.service"])[0];
        assert!(m.row.is_up());
        assert_eq!(m.active_enter_usec, Some(1_700_000_000_000_000));
        // a value not sent is read again
        assert_eq!(
            u.apply(Signal::Changed {
                path: row.path.as_str().into(),
                values: vec![],
                invalidated: vec![Prop::ActiveEnterTimestamp],
            }),
            Some("model@x.service".to_string())
        );
        // a fresh listing of it replaces the row, keeping what was read
        u.put(UnitRow::new(
            "model@x.service",
            "deactivating",
            "stop-sigterm",
        ));
        let m = &u.matching(&["model@*.service"])[0];
        assert_eq!(m.row.active_state, "deactivating");
        assert_eq!(m.active_enter_usec, Some(1_700_000_000_000_000));
    }
}
