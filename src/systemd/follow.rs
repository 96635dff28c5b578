//! The thread behind a [`UnitView`]: one ordered message stream that subscribes, adds the match
//! rules, lists the units and then applies systemd's signals (see the view's module doc for why
//! the order matters). [`Follower`] holds what the loop tracks between messages: the replies it
//! waits for, the property reads not yet sent, and the syncs whose ping came back.

use super::names::{MANAGER_INTERFACE, PROPERTIES, SYSTEMD, SYSTEMD_PATH, UNIT_PATH_PREFIX};
use super::view::{PIPELINE_WINDOW, Signal, UnitView, extra_props};
use super::{Bus, Prop, ServiceState, SystemdError, UnitRow};
use crate::{log_err, log_info};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use zbus::blocking::Connection;
use zbus::message::{Builder, Message, Type};
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

/// A reply the thread is waiting for.
pub(super) enum Pending {
    /// Subscribe or AddMatch.
    Setup,
    /// A listing: of every unit of ours (`None`), or of one unit.
    List(Option<String>),
    /// One property of a unit.
    Prop(String, Prop),
}

/// The loop's state (see the module's doc).
pub(super) struct Follower<'a> {
    view: &'a UnitView,
    conn: &'a Connection,
    pending: HashMap<u32, Pending>,
    /// Property reads not sent yet: they go out [`PIPELINE_WINDOW`] at a time.
    outbox: VecDeque<(Message, String, Prop)>,
    in_flight: usize,
    /// Serials of syncs' pings whose reply came back while reads were still outstanding.
    deferred: Vec<u32>,
    /// Property replies still due of the first listing, after which the view is live.
    initial_due: Option<usize>,
}

impl<'a> Follower<'a> {
    /// Follows systemd for `view` until the bus is lost (the error says how).
    pub(super) fn run(view: &'a UnitView, bus: &'a Bus) -> Result<(), SystemdError> {
        let conn = bus.conn()?;
        // The stream exists before the first call goes out, so no reply or signal is missed.
        let mut stream = zbus::blocking::MessageIterator::from(conn);
        let mut follower = Follower {
            view,
            conn,
            pending: HashMap::new(),
            outbox: VecDeque::new(),
            in_flight: 0,
            deferred: Vec::new(),
            initial_due: None,
        };
        follower.set_up()?;
        for msg in stream.by_ref() {
            let msg = msg?;
            match msg.message_type() {
                Type::Signal => follower.on_signal(&msg)?,
                Type::MethodReturn | Type::Error => follower.on_reply(&msg)?,
                _ => {}
            }
        }
        Err(SystemdError::Failed(
            "the system bus connection closed".into(),
        ))
    }

    /// The match rules, `Subscribe`, then the first listing, in that order on one stream.
    fn set_up(&mut self) -> Result<(), SystemdError> {
        let mut rules = vec![
            zbus::MatchRule::builder()
                .msg_type(Type::Signal)
                .sender(SYSTEMD)?
                .interface(PROPERTIES)?
                .member("PropertiesChanged")?
                .path_namespace(UNIT_PATH_PREFIX)?
                .build(),
        ];
        for member in ["UnitNew", "UnitRemoved", "Reloading"] {
            rules.push(
                zbus::MatchRule::builder()
                    .msg_type(Type::Signal)
                    .sender(SYSTEMD)?
                    .interface(MANAGER_INTERFACE)?
                    .member(member)?
                    .path(SYSTEMD_PATH)?
                    .build(),
            );
        }
        for rule in rules {
            let msg = Message::method_call("/org/freedesktop/DBus", "AddMatch")?
                .destination("org.freedesktop.DBus")?
                .interface("org.freedesktop.DBus")?
                .build(&(rule.to_string(),))?;
            self.send(msg, Pending::Setup)?;
        }
        self.send(manager_call("Subscribe")?.build(&())?, Pending::Setup)?;
        self.list(None)
    }

    fn send(&mut self, msg: Message, what: Pending) -> Result<(), SystemdError> {
        self.pending
            .insert(msg.primary_header().serial_num().get(), what);
        self.conn.send(&msg)?;
        Ok(())
    }

    /// Lists every unit of the view (`None`) or one unit again.
    fn list(&mut self, only: Option<String>) -> Result<(), SystemdError> {
        let msg = {
            let patterns: Vec<&str> = match &only {
                None => self.view.patterns.iter().map(|p| p.as_ref()).collect(),
                Some(name) => vec![name.as_str()],
            };
            manager_call("ListUnitsByPatterns")?.build(&(Vec::<&str>::new(), patterns))?
        };
        self.send(msg, Pending::List(only))
    }

    fn on_signal(&mut self, msg: &Message) -> Result<(), SystemdError> {
        let header = msg.header();
        let (Some(interface), Some(member)) = (header.interface(), header.member()) else {
            return Ok(());
        };
        if (interface.as_str(), member.as_str()) == (MANAGER_INTERFACE, "Reloading") {
            // After a daemon-reload, list everything again.
            if msg
                .body()
                .deserialize::<bool>()
                .is_ok_and(|started| !started)
            {
                self.list(None)?;
            }
            return Ok(());
        }
        let Some(signal) = decode_signal(msg) else {
            return Ok(());
        };
        let refresh = self.view.lock().units.apply(signal);
        if let Some(name) = refresh {
            self.list(Some(name))?;
        }
        Ok(())
    }

    fn on_reply(&mut self, msg: &Message) -> Result<(), SystemdError> {
        let header = msg.header();
        let Some(serial) = header.reply_serial().map(|s| s.get()) else {
            return Ok(());
        };
        let Some(what) = self.pending.remove(&serial) else {
            if self.view.lock().wanted.remove(&serial) {
                // A sync's ping: it passes once the reads that signals before it asked for
                // are in too.
                self.deferred.push(serial);
                self.release();
            }
            return Ok(());
        };
        let ok = msg.message_type() == Type::MethodReturn;
        match what {
            // A second Subscribe of the same connection is refused so; harmless.
            Pending::Setup
                if !ok
                    && header.error_name().map(|n| n.as_str())
                        != Some("org.freedesktop.systemd1.AlreadySubscribed") =>
            {
                return Err(SystemdError::Failed(format!(
                    "cannot subscribe to systemd's signals: {:?}",
                    header.error_name()
                )));
            }
            Pending::Setup => {}
            Pending::List(only) => {
                let rows: Vec<UnitRow> = if ok {
                    msg.body().deserialize()?
                } else if only.is_some() {
                    Vec::new()
                } else {
                    return Err(SystemdError::Failed("systemd refused to list units".into()));
                };
                self.on_listing(only, rows)?;
            }
            Pending::Prop(name, prop) => self.on_property(&name, prop, ok, msg),
        }
        self.pump()?;
        self.release();
        self.go_live_when_listed();
        Ok(())
    }

    /// Puts a listing into the map and queues the reads of the properties kept beside each row.
    fn on_listing(&mut self, only: Option<String>, rows: Vec<UnitRow>) -> Result<(), SystemdError> {
        {
            let mut shared = self.view.lock();
            match &only {
                None => shared.units.reset(rows.clone()),
                Some(name) => {
                    shared.units.remove(name);
                    for r in rows.iter().cloned() {
                        shared.units.put(r);
                    }
                }
            }
        }
        let mut asked = 0;
        for row in &rows {
            for &prop in extra_props(&row.name) {
                let get = Message::method_call(row.path.as_str(), "Get")?
                    .destination(SYSTEMD)?
                    .interface(PROPERTIES)?
                    .build(&prop.interface_and_name())?;
                self.outbox.push_back((get, row.name.clone(), prop));
                asked += 1;
            }
        }
        if only.is_none() && self.initial_due.is_none() && !self.view.is_live() {
            self.initial_due = Some(asked);
        }
        Ok(())
    }

    fn on_property(&mut self, name: &str, prop: Prop, ok: bool, msg: &Message) {
        self.in_flight -= 1;
        if ok && let Ok(v) = msg.body().deserialize::<OwnedValue>() {
            let mut s = ServiceState::default();
            s.set(prop, v);
            self.view.lock().units.set_state(name, &s);
        }
        if let Some(n) = self.initial_due.as_mut() {
            *n = n.saturating_sub(1);
        }
    }

    /// Sends property reads a window at a time: dbus-daemon refuses more than 128 pending
    /// replies per connection.
    fn pump(&mut self) -> Result<(), SystemdError> {
        while self.in_flight < PIPELINE_WINDOW
            && let Some((msg, name, prop)) = self.outbox.pop_front()
        {
            self.send(msg, Pending::Prop(name, prop))?;
            self.in_flight += 1;
        }
        Ok(())
    }

    /// Lets the syncs whose ping has come back return, once no listing or property read of the
    /// thread is outstanding.
    fn release(&mut self) {
        if self.deferred.is_empty()
            || !self.outbox.is_empty()
            || self.pending.values().any(|p| !matches!(p, Pending::Setup))
        {
            return;
        }
        let mut shared = self.view.lock();
        shared.barriers.extend(self.deferred.drain(..));
        self.view.changed.notify_all();
    }

    fn go_live_when_listed(&mut self) {
        if self.initial_due != Some(0) {
            return;
        }
        self.initial_due = None;
        let mut shared = self.view.lock();
        shared.live = true;
        log_info!(
            "following {} units of {} from systemd's signals",
            shared.units.len(),
            self.view.patterns.join(" ")
        );
    }
}

impl UnitView {
    /// Starts following systemd (see the module's doc); returns at once, the first listing is
    /// made by the thread.
    pub fn watch(self: &Arc<Self>, bus: &Bus) {
        *self.bus.lock().unwrap_or_else(|e| e.into_inner()) = Some(bus.clone());
        let view = Arc::clone(self);
        let bus = bus.clone();
        std::thread::spawn(move || {
            if let Err(e) = Follower::run(&view, &bus) {
                log_err!("stopped following systemd's signals ({e}); every read asks systemd now");
            }
            view.lock().live = false;
            view.changed.notify_all();
        });
    }
}

fn manager_call(member: &'static str) -> zbus::Result<Builder<'static>> {
    Message::method_call(SYSTEMD_PATH, member)?
        .destination(SYSTEMD)?
        .interface(MANAGER_INTERFACE)
}

/// The unit signal a message carries (`PropertiesChanged`, `UnitNew`, `UnitRemoved`), decoded;
/// `None` for any other message or a body of the wrong shape.
fn decode_signal(msg: &Message) -> Option<Signal> {
    let header = msg.header();
    let (interface, member, path) = (header.interface()?, header.member()?, header.path()?);
    match (interface.as_str(), member.as_str()) {
        (PROPERTIES, "PropertiesChanged") => {
            let (iface, changed, invalidated) = msg
                .body()
                .deserialize::<(String, HashMap<String, OwnedValue>, Vec<String>)>()
                .ok()?;
            Some(Signal::Changed {
                path: path.as_str().to_string(),
                values: changed
                    .into_iter()
                    .filter_map(|(k, v)| Some((Prop::from_signal(&iface, &k)?, v)))
                    .collect(),
                invalidated: invalidated
                    .iter()
                    .filter_map(|k| Prop::from_signal(&iface, k))
                    .collect(),
            })
        }
        (MANAGER_INTERFACE, "UnitNew") => {
            let (name, path) = msg.body().deserialize::<(String, OwnedObjectPath)>().ok()?;
            Some(Signal::UnitNew { name, path })
        }
        (MANAGER_INTERFACE, "UnitRemoved") => {
            let (name, _) = msg.body().deserialize::<(String, OwnedObjectPath)>().ok()?;
            Some(Signal::UnitRemoved { name })
        }
        _ => None,
    }
}
