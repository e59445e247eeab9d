//! The replication client: welcome, snapshots, interpolation, inputs and prediction.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::config::{ClientConfig, ConfigError, MAX_RING_TICKS, MAX_SEND_INTERVAL_TICKS};
use super::predict::{Prediction, StepFn};
use super::wire::{
    ClientControl, ControlMsg, InputFrameOut, MAX_INPUTS_PER_FRAME, WelcomeWire, input_ack,
    read_part_prefix,
};
use super::{CloseReason, InputTick, REPLICATION_VERSION};
use crate::codec::{self, CodecError};
use crate::connection::{self, ClientId, Event, MAX_DATAGRAM_BYTES, SendError};
use crate::snapshot::tick_map::TickMap;
use crate::snapshot::{
    EntityId, EntityState, InterpolationBuffer, InterpolationConfig, QuantizeConfig,
    ReceiverConfig, SnapshotError, SnapshotReceiver, Tick, Transform,
};

/// Least time between two resync requests: parts already in flight against the missing
/// baseline fail too, and must not each ask for another full snapshot.
const RESYNC_INTERVAL: Duration = Duration::from_millis(250);
/// Most input ticks [`Client::inputs_due`] catches up after a stall; older ones are skipped.
const MAX_INPUT_CATCH_UP: u64 = 4;
/// Longest tick period a welcome may announce (1 Hz).
const MAX_TICK_INTERVAL: Duration = Duration::from_secs(1);

/// What the server told this client when it joined.
#[derive(Debug, Clone, PartialEq)]
pub struct Welcome {
    /// This client's id on the server.
    pub client_id: ClientId,
    /// The entity this client owns (its avatar), if any.
    pub owned: Option<EntityId>,
    /// The server's tick when it sent the welcome.
    pub server_tick: Tick,
    /// The server's tick period.
    pub tick_interval: Duration,
    /// A snapshot every this many ticks.
    pub send_interval_ticks: u32,
    /// The quantization of every snapshot.
    pub quantize: QuantizeConfig,
    /// The game's own welcome bytes ([`ServerConfig::welcome_data`](super::ServerConfig)).
    pub data: Vec<u8>,
}

/// What happened on the client, for the game.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The handshake completed; the welcome follows.
    Connected {
        /// The id the server gave this client.
        client_id: ClientId,
    },
    /// The welcome arrived: snapshots, inputs and [`Client::view`] work from now on.
    Welcomed(Welcome),
    /// The server gave this client another entity, or took it away.
    OwnedChanged {
        /// The entity now owned.
        entity: Option<EntityId>,
    },
    /// Every part of a snapshot newer than every complete one before arrived: the client
    /// now holds the server's whole world (its scope of it) as of `tick`.
    SnapshotComplete {
        /// Its tick.
        tick: Tick,
        /// When its last part arrived.
        received_at: Instant,
    },
    /// The first part of a snapshot newer than every one before arrived.
    Snapshot {
        /// Its tick.
        tick: Tick,
        /// When it arrived.
        received_at: Instant,
    },
    /// Reconciling the predicted entity moved it by more than the threshold (the jump is
    /// blended out, not drawn).
    Corrected {
        /// The predicted entity.
        entity: EntityId,
        /// How far the prediction was off, in metres.
        distance_m: f32,
    },
    /// A message on one of the game's channels.
    Message {
        /// The game channel index.
        channel: u8,
        /// Its bytes.
        bytes: Vec<u8>,
        /// When it arrived.
        received_at: Instant,
    },
    /// The session is over; no more events follow.
    Disconnected {
        /// Why.
        reason: CloseReason,
    },
}

/// Counters of the replication client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Snapshots newer than every one before (first part of each).
    pub snapshots_received: u64,
    /// Parts that did not decode, lacked their baseline, or came before the welcome.
    pub parts_rejected: u64,
    /// Full snapshots asked for because a baseline was missing.
    pub resyncs_requested: u64,
    /// Inputs produced.
    pub inputs_sent: u64,
    /// Input packets sent.
    pub input_packets_sent: u64,
    /// Reconciliations that moved the predicted entity by more than the threshold.
    pub corrections: u64,
    /// Control messages that did not decode.
    pub invalid_control: u64,
}

/// What to draw at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    /// Every entity's transform, by id: interpolated, and predicted for the owned entity
    /// when prediction is on.
    pub entities: Vec<(EntityId, Transform)>,
    /// The entity this client owns.
    pub owned: Option<EntityId>,
    /// The newest input the drawn owned entity reflects (for measuring input latency).
    pub owned_input: Option<InputTick>,
    /// The (fractional) server tick being drawn.
    pub render_tick: Option<f64>,
    /// The entities of this view that the view written before into the same `View` did not
    /// hold (all of them in a new `View`), by id: the ones to start drawing (an entity that
    /// entered the client's scope, or came to the world, once the render time reaches it).
    pub entered: Vec<EntityId>,
    /// The entities the view written before into the same `View` held that this one does
    /// not, by id: the ones to stop drawing.
    pub left: Vec<EntityId>,
}

/// `entered`: the ids of `now` not in `before`; `left`: those of `before` not in `now`
/// (both lists by increasing id, as a [`View`]'s are).
fn entered_and_left(
    before: &[(EntityId, Transform)],
    now: &[(EntityId, Transform)],
    entered: &mut Vec<EntityId>,
    left: &mut Vec<EntityId>,
) {
    entered.clear();
    left.clear();
    let (mut b, mut n) = (before.iter().peekable(), now.iter().peekable());
    loop {
        match (b.peek(), n.peek()) {
            (Some(&&(x, _)), Some(&&(y, _))) if x == y => {
                b.next();
                n.next();
            }
            (Some(&&(x, _)), Some(&&(y, _))) if x < y => {
                left.push(x);
                b.next();
            }
            (_, Some(&&(y, _))) => {
                entered.push(y);
                n.next();
            }
            (Some(&&(x, _)), None) => {
                left.push(x);
                b.next();
            }
            (None, None) => break,
        }
    }
}

/// Why an input was not sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// No welcome yet (or the session ended).
    #[error("not welcomed by a server")]
    NotWelcomed,
    /// The encoded input exceeds `max_input_bytes`.
    #[error("input of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The input could not be encoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

#[derive(Debug)]
pub(super) struct Session {
    pub(super) welcome: Welcome,
    pub(super) receiver: SnapshotReceiver,
    interp: InterpolationBuffer,
    /// The server's input acknowledgement carried by each received tick.
    acks: TickMap<Option<InputTick>>,
    pub(super) ring_ticks: u32,
    newest: Option<Tick>,
    reconciled: Option<Tick>,
}

/// The input acknowledgement as it came: from a datagram's prefix (relative to the part's
/// tick, resolved once the part is decoded) or plain from the control channel.
#[derive(Debug, Clone, Copy)]
enum AckCode {
    Prefix(u64),
    Plain(Option<InputTick>),
}

struct Pending<I> {
    tick: InputTick,
    input: I,
    bytes: Vec<u8>,
}

/// The sans-IO replication client, generic over the game's input type; see the
/// [module docs](super).
pub struct Client<I> {
    conn: connection::Client,
    config: ClientConfig,
    control: u8,
    pub(super) session: Option<Session>,
    events: VecDeque<ClientEvent>,
    stats: ClientStats,
    step: Option<StepFn<I>>,
    prediction: Prediction,
    /// Inputs the server may not have applied yet, oldest first, consecutive ticks.
    pending: VecDeque<Pending<I>>,
    /// The newest input any snapshot acknowledged.
    acked_input: Option<InputTick>,
    next_input: Option<InputTick>,
    /// Origin of the input clock and inputs produced on it.
    clock: Option<(Instant, u64)>,
    want_resync: bool,
    resync_at: Option<Instant>,
    /// When the last input packet went out.
    last_frame_at: Option<Instant>,
    closed: Option<CloseReason>,
    /// A view's entity list, kept between frames: the next view is written here while the
    /// last one stays in its `View` to be compared with, and the two lists swap.
    view_spare: Vec<(EntityId, Transform)>,
    /// The bytes of inputs the server applied, to encode the next inputs in: a player sends
    /// one a tick for the whole session.
    spare_inputs: Vec<Vec<u8>>,
    /// Where input packets are encoded, kept from packet to packet.
    frame: Vec<u8>,
}

/// Inputs `pending[inputs]`, written as the sequence of byte strings an input frame holds.
struct Unacked<'a, I> {
    pending: &'a VecDeque<Pending<I>>,
    inputs: std::ops::Range<usize>,
}

impl<I> Serialize for Unacked<'_, I> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            self.pending
                .range(self.inputs.clone())
                .map(|p| p.bytes.as_slice()),
        )
    }
}

/// Spare input buffers kept: as many as a snapshot's acknowledgement lets go at once, with
/// room.
const SPARE_INPUTS: usize = 16;

/// Forget the pending inputs at or before `acked` (the server applied them), keeping their
/// buffers for the next inputs.
fn forget_inputs<I>(
    pending: &mut VecDeque<Pending<I>>,
    spare: &mut Vec<Vec<u8>>,
    acked: Option<InputTick>,
) {
    while pending
        .front()
        .is_some_and(|p| acked.is_some_and(|a| p.tick <= a))
    {
        if let Some(p) = pending.pop_front()
            && spare.len() < SPARE_INPUTS
        {
            spare.push(p.bytes);
        }
    }
}

impl<I> std::fmt::Debug for Client<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("state", &self.conn.state())
            .field("welcomed", &self.session.is_some())
            .field("pending_inputs", &self.pending.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<I: Serialize> Client<I> {
    /// Start connecting to `server` at `now`; fails when the config is unusable.
    pub fn new(
        config: ClientConfig,
        server: SocketAddr,
        now: Instant,
    ) -> Result<Self, ConfigError> {
        let control = config.validate()?;
        let mut inner = config.client.clone();
        inner.connection.channels =
            super::config::with_control_channel(&inner.connection.channels)?.0;
        let seed = config.seed.unwrap_or_else(rand::random);
        Ok(Self {
            conn: connection::Client::new(inner, server, now, seed)?,
            config,
            control,
            session: None,
            events: VecDeque::new(),
            stats: ClientStats::default(),
            step: None,
            prediction: Prediction::default(),
            pending: VecDeque::new(),
            acked_input: None,
            next_input: None,
            clock: None,
            want_resync: false,
            resync_at: None,
            last_frame_at: None,
            spare_inputs: Vec::new(),
            frame: Vec::new(),
            closed: None,
            view_spare: Vec::new(),
        })
    }

    /// The game's deterministic step for the owned entity (the one the server uses for
    /// inputs); with it, and prediction enabled, the owned entity is predicted.
    pub fn set_step(&mut self, step: impl Fn(&mut EntityState, &I, f32) + Send + 'static) {
        self.step = Some(Box::new(step));
    }

    /// Turn prediction on or off (it is on by default once a step function is set).
    pub fn set_prediction(&mut self, enabled: bool) {
        self.config.prediction.enabled = enabled;
        if !enabled {
            self.prediction.clear();
        }
    }

    fn predicting(&self) -> bool {
        self.config.prediction.enabled && self.step.is_some()
    }

    /// The connection endpoint underneath, for its state and counters.
    pub fn connection(&self) -> &connection::Client {
        &self.conn
    }

    /// The welcome, once it arrived.
    pub fn welcome(&self) -> Option<&Welcome> {
        self.session.as_ref().map(|s| &s.welcome)
    }

    /// The entity this client owns.
    pub fn owned_entity(&self) -> Option<EntityId> {
        self.welcome().and_then(|w| w.owned)
    }

    /// The snapshot receiver (live world, composites, counters), once welcomed.
    pub fn receiver(&self) -> Option<&SnapshotReceiver> {
        self.session.as_ref().map(|s| &s.receiver)
    }

    /// The interpolation buffer (playout delay, counters), once welcomed.
    pub fn interpolation(&self) -> Option<&InterpolationBuffer> {
        self.session.as_ref().map(|s| &s.interp)
    }

    /// The newest snapshot tick received.
    pub fn newest_tick(&self) -> Option<Tick> {
        self.session.as_ref().and_then(|s| s.newest)
    }

    /// The predicted state of the owned entity, without smoothing.
    pub fn predicted(&self) -> Option<&EntityState> {
        self.prediction.state()
    }

    /// The newest input the server said it applied.
    pub fn acked_input(&self) -> Option<InputTick> {
        self.acked_input
    }

    /// Counters.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// Estimate of the server's tick now: the newest snapshot's tick, plus the time since it
    /// arrived and half the round trip, in ticks. `None` before the first snapshot.
    pub fn server_tick(&self, now: Instant) -> Option<f64> {
        let s = self.session.as_ref()?;
        let base = s.receiver.estimated_server_tick(now)?;
        let half_rtt = self
            .conn
            .connection_stats()
            .and_then(|c| c.rtt)
            .unwrap_or_default()
            / 2;
        Some(base + half_rtt.as_secs_f64() / s.welcome.tick_interval.as_secs_f64())
    }

    /// Feed one received datagram. Invalid ones are dropped and counted.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.conn.handle_datagram(now, from, datagram);
        self.pump(now);
    }

    /// Advance timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.conn.handle_timeout(now);
        self.pump(now);
    }

    /// The stream under the connection (TCP or WebSocket) closed: the client ends now
    /// ([`connection::Client::stream_closed`]) rather than at its timeout.
    pub fn stream_closed(&mut self, now: Instant) {
        self.conn.stream_closed(now);
        self.pump(now);
    }

    /// Next datagram to send, written to `buf`.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<connection::Transmit> {
        let t = self.conn.poll_transmit(now, buf);
        self.pump(now);
        t
    }

    /// Next event, oldest first.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conn.poll_timeout()
    }

    /// Queue a message on game channel `channel`.
    pub fn send_message(
        &mut self,
        now: Instant,
        channel: u8,
        bytes: &[u8],
    ) -> Result<(), SendError> {
        if channel >= self.control {
            return Err(SendError::Channel(
                crate::channel::SendError::UnknownChannel(channel),
            ));
        }
        self.conn.send_message(now, channel, bytes)
    }

    /// Say goodbye (redundantly); keep polling transmits to send it.
    pub fn disconnect(&mut self) {
        self.conn.disconnect();
        self.pump_closed();
    }

    /// How many inputs are due at `now` on the client's input clock, which runs at the
    /// server's tick rate from the first call after the welcome. Call
    /// [`send_input`](Self::send_input) that many times. After a stall at most a few are
    /// caught up; the ticks beyond are skipped.
    pub fn inputs_due(&mut self, now: Instant) -> u32 {
        let Some(s) = &self.session else {
            return 0;
        };
        let dt = s.welcome.tick_interval.as_secs_f64();
        let (origin, produced) = *self.clock.get_or_insert((now, 0));
        let target = (now.saturating_duration_since(origin).as_secs_f64() / dt) as u64 + 1;
        let mut produced = produced;
        if target > produced + MAX_INPUT_CATCH_UP {
            let skipped = target - MAX_INPUT_CATCH_UP - produced;
            produced += skipped;
            // Skipped ticks leave a gap in the numbering; the server only needs order.
            let skipped = u32::try_from(skipped).unwrap_or(u32::MAX);
            self.next_input = self.next_input.map(|t| t.saturating_add(skipped));
            self.clock = Some((origin, produced));
        }
        u32::try_from(target.saturating_sub(produced)).unwrap_or(u32::MAX)
    }

    /// Send one input for the next tick: it is applied to the predicted entity at once, and
    /// rides in every input packet until the server acknowledges it. Returns its tick.
    pub fn send_input(&mut self, now: Instant, input: I) -> Result<InputTick, InputError> {
        let Some(s) = &self.session else {
            return Err(InputError::NotWelcomed);
        };
        if self.closed.is_some() {
            return Err(InputError::NotWelcomed);
        }
        let mut bytes = self.spare_inputs.pop().unwrap_or_default();
        bytes.clear();
        codec::encode_into(&input, &mut bytes)?;
        if bytes.len() > self.config.max_input_bytes {
            return Err(InputError::TooLarge(bytes.len()));
        }
        let tick = match self.next_input {
            Some(t) => t,
            None => {
                // Start at the estimated server tick, so the numbers say which tick each
                // input is for.
                let estimate = self
                    .server_tick(now)
                    .unwrap_or(f64::from(s.welcome.server_tick.0));
                estimate.max(0.0).round() as InputTick
            }
        };
        self.next_input = Some(tick.saturating_add(1));
        let dt = s.welcome.tick_interval.as_secs_f32();
        if self.predicting()
            && let Some(step) = &self.step
        {
            self.prediction.apply(step, tick, &input, dt);
        }
        self.pending.push_back(Pending { tick, input, bytes });
        while self.pending.len() > self.config.max_pending_inputs {
            if let Some(p) = self.pending.pop_front()
                && self.spare_inputs.len() < SPARE_INPUTS
            {
                self.spare_inputs.push(p.bytes);
            }
        }
        if let Some(c) = self.clock.as_mut() {
            c.1 += 1;
        }
        self.stats.inputs_sent += 1;
        self.send_frame(now);
        Ok(tick)
    }

    /// What to draw at `now`: interpolated entities, the owned one predicted.
    pub fn view(&mut self, now: Instant) -> View {
        let mut view = View::default();
        // (Written straight into the new list: `view_into`'s spare list stays with a frame
        // loop that keeps its `View`.)
        (view.owned, view.owned_input, view.render_tick) = self.sample(now, &mut view.entities);
        entered_and_left(&[], &view.entities, &mut view.entered, &mut view.left);
        view
    }

    /// [`Self::view`] written into `view`, whose entity list a frame loop keeps from one
    /// frame to the next: once it has grown to the scope's size, a frame allocates nothing.
    /// Its `entered` and `left` compare it with the view written into it before.
    pub fn view_into(&mut self, now: Instant, view: &mut View) {
        let mut entities = std::mem::take(&mut self.view_spare);
        entities.clear();
        (view.owned, view.owned_input, view.render_tick) = self.sample(now, &mut entities);
        entered_and_left(&view.entities, &entities, &mut view.entered, &mut view.left);
        self.view_spare = std::mem::replace(&mut view.entities, entities);
    }

    /// Write the entities to draw at `now` into `entities`; the owned entity, the newest
    /// input it reflects and the render tick.
    fn sample(
        &mut self,
        now: Instant,
        entities: &mut Vec<(EntityId, Transform)>,
    ) -> (Option<EntityId>, Option<InputTick>, Option<f64>) {
        let predicting = self.predicting();
        let Some(s) = self.session.as_mut() else {
            return (None, None, None);
        };
        s.interp.sample_into(now, entities);
        let render_tick = s.interp.render_tick(now);
        let owned = s.welcome.owned;
        let mut owned_input = None;
        if let Some(id) = owned {
            match self.prediction.display(now, &self.config.prediction) {
                Some(t) if predicting => {
                    match entities.binary_search_by_key(&id, |(e, _)| *e) {
                        Ok(i) => entities[i].1 = t,
                        Err(i) => entities.insert(i, (id, t)),
                    }
                    owned_input = self.prediction.newest_input();
                }
                _ => {
                    // The drawn state moves from the newest tick at or before render time
                    // toward the next: it reflects the inputs of that tick.
                    if let Some(rt) = render_tick {
                        let at = Tick(rt.max(0.0).floor() as u32);
                        owned_input = s.acks.at_or_before(at).and_then(|(_, a)| *a);
                    }
                }
            }
        }
        (owned, owned_input, render_tick)
    }

    fn pump(&mut self, now: Instant) {
        while let Some(e) = self.conn.poll_event() {
            match e {
                Event::Connected { client_id } => {
                    self.events.push_back(ClientEvent::Connected { client_id })
                }
                Event::Disconnected { reason } => self.close(CloseReason::Connection(reason)),
                Event::Message {
                    channel,
                    payload,
                    received_at,
                } if channel == self.control => self.on_control(now, received_at, &payload),
                Event::Message {
                    channel,
                    payload,
                    received_at,
                } => self.events.push_back(ClientEvent::Message {
                    channel,
                    bytes: payload,
                    received_at,
                }),
                Event::Datagram {
                    payload,
                    received_at,
                    ..
                } => {
                    match read_part_prefix(&payload) {
                        Some((code, part)) => {
                            self.on_part(received_at, AckCode::Prefix(code), part)
                        }
                        None => self.stats.parts_rejected += 1,
                    }
                    self.conn.recycle_payload(payload);
                }
                // Inputs are acknowledged by the snapshots, not per packet.
                Event::Delivery { .. } => {}
            }
        }
        if self.closed.is_some() {
            return;
        }
        // Inputs still unacknowledged go out again once per tick even when the game sends
        // none (it paused, or it sent faster than the server takes them).
        let resend_due = self.session.as_ref().is_some_and(|s| {
            self.last_frame_at
                .is_some_and(|t| now.saturating_duration_since(t) >= s.welcome.tick_interval)
        }) && self
            .pending
            .back()
            .is_some_and(|p| self.acked_input.is_none_or(|a| p.tick > a));
        if self.want_resync || resend_due {
            self.send_frame(now);
        }
    }

    fn pump_closed(&mut self) {
        while let Some(e) = self.conn.poll_event() {
            if let Event::Disconnected { reason } = e {
                self.close(CloseReason::Connection(reason));
            }
        }
    }

    fn close(&mut self, reason: CloseReason) {
        if self.closed.is_none() {
            self.closed = Some(reason.clone());
            self.events.push_back(ClientEvent::Disconnected { reason });
        }
    }

    /// Why the session ended, once it has.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.closed.as_ref()
    }

    pub(super) fn on_control(&mut self, now: Instant, received_at: Instant, payload: &[u8]) {
        match codec::decode::<ControlMsg>(payload) {
            Ok(ControlMsg::Welcome(w)) if self.session.is_none() => match self.set_up(w) {
                Ok(()) => {
                    if let Ok(ready) = codec::encode(&ClientControl::Ready) {
                        let _ = self.conn.send_message(now, self.control, &ready);
                    }
                }
                Err(why) => {
                    self.conn.disconnect();
                    self.close(CloseReason::BadWelcome(why));
                }
            },
            Ok(ControlMsg::Welcome(_)) => self.stats.invalid_control += 1,
            Ok(ControlMsg::Owned(entity)) => {
                let entity = entity.map(EntityId);
                if let Some(s) = self.session.as_mut() {
                    s.welcome.owned = entity;
                    self.prediction.clear();
                    self.events.push_back(ClientEvent::OwnedChanged { entity });
                }
            }
            Ok(ControlMsg::Part { input_ack, bytes }) => {
                self.on_part(received_at, AckCode::Plain(input_ack), &bytes)
            }
            Err(_) => self.stats.invalid_control += 1,
        }
    }

    fn set_up(&mut self, w: WelcomeWire) -> Result<(), String> {
        if w.version != REPLICATION_VERSION {
            return Err(format!(
                "replication version {} (this client speaks {REPLICATION_VERSION})",
                w.version
            ));
        }
        let quantize = QuantizeConfig::from(w.quantize);
        if quantize.tick_interval > MAX_TICK_INTERVAL {
            return Err("tick interval above 1 s".into());
        }
        if !(1..=MAX_SEND_INTERVAL_TICKS).contains(&w.send_interval_ticks)
            || !(1..=MAX_RING_TICKS).contains(&w.ring_ticks)
        {
            return Err("send interval or history length out of range".into());
        }
        let receiver = SnapshotReceiver::new(ReceiverConfig {
            quantize,
            ring_ticks: w.ring_ticks,
            max_entities: self.config.max_entities,
            max_held_entities: self.config.max_held_entities,
        })
        .map_err(|e| e.to_string())?;
        let interp = InterpolationBuffer::new(InterpolationConfig {
            tick_interval: quantize.tick_interval,
            initial_send_interval: quantize.tick_interval * w.send_interval_ticks,
            fixed_delay: self.config.interpolation_delay,
            ..InterpolationConfig::default()
        });
        let welcome = Welcome {
            client_id: ClientId(w.client_id),
            owned: w.owned.map(EntityId),
            server_tick: Tick(w.server_tick),
            tick_interval: quantize.tick_interval,
            send_interval_ticks: w.send_interval_ticks,
            quantize,
            data: w.app,
        };
        self.events
            .push_back(ClientEvent::Welcomed(welcome.clone()));
        self.session = Some(Session {
            welcome,
            receiver,
            interp,
            acks: TickMap::default(),
            ring_ticks: w.ring_ticks,
            newest: None,
            reconciled: None,
        });
        Ok(())
    }

    fn on_part(&mut self, at: Instant, ack: AckCode, part: &[u8]) {
        let Some(s) = self.session.as_mut() else {
            // Before the welcome nothing can be decoded; the server does not send parts
            // until the client says it is ready, so this is a stray or hostile datagram.
            self.stats.parts_rejected += 1;
            return;
        };
        let info = match s.receiver.read_part(at, part) {
            Ok(info) => info,
            Err(e) => {
                self.stats.parts_rejected += 1;
                if matches!(e, SnapshotError::MissingBaseline(_))
                    && self
                        .resync_at
                        .is_none_or(|t| at.saturating_duration_since(t) >= RESYNC_INTERVAL)
                {
                    self.want_resync = true;
                }
                return;
            }
        };
        let ack = match ack {
            AckCode::Plain(a) => a,
            // A code naming an impossible input is a broken sender: ignore the claim.
            AckCode::Prefix(code) => input_ack(code, info.tick.0).unwrap_or(None),
        };
        s.acks.insert(info.tick, ack);
        while s
            .acks
            .first_tick()
            .is_some_and(|t| info.tick.0.saturating_sub(t.0) >= s.ring_ticks)
        {
            s.acks.pop_first();
        }
        if let Some(a) = ack {
            self.acked_input = Some(self.acked_input.map_or(a, |b| b.max(a)));
        }
        if s.newest.is_none_or(|n| info.tick > n) {
            s.newest = Some(info.tick);
            self.stats.snapshots_received += 1;
            self.events.push_back(ClientEvent::Snapshot {
                tick: info.tick,
                received_at: at,
            });
        }
        if info.applied {
            s.interp.push(at, info.tick, s.receiver.transforms());
        }
        if info.completed && s.reconciled.is_none_or(|r| info.tick > r) {
            s.reconciled = Some(info.tick);
            self.events.push_back(ClientEvent::SnapshotComplete {
                tick: info.tick,
                received_at: at,
            });
            self.reconcile(at, info.tick);
        }
        if !self.predicting() {
            // Nothing to replay: what the server applied can go.
            forget_inputs(&mut self.pending, &mut self.spare_inputs, self.acked_input);
        }
    }

    /// Rewind the owned entity to its state at completed tick `tick` and replay the inputs
    /// the server had not applied by then.
    fn reconcile(&mut self, now: Instant, tick: Tick) {
        if !self.predicting() {
            return;
        }
        let (Some(s), Some(step)) = (self.session.as_ref(), self.step.as_ref()) else {
            return;
        };
        let Some(id) = s.welcome.owned else {
            return;
        };
        let Some(entity) = s.receiver.composite(tick).and_then(|w| w.get(id)) else {
            // Not in this snapshot (not spawned yet, or despawned): nothing to predict from.
            self.prediction.clear();
            return;
        };
        let server = EntityState {
            transform: s.welcome.quantize.dequantize(&entity.transform),
            component: entity.component.as_ref().map(|c| c.to_vec()),
        };
        let server_input = s.acks.get(tick).copied().flatten();
        forget_inputs(&mut self.pending, &mut self.spare_inputs, server_input);
        let dt = s.welcome.tick_interval.as_secs_f32();
        let replay = self.pending.iter().map(|p| (p.tick, &p.input));
        if let Some(distance_m) = self.prediction.reconcile(
            now,
            (server, server_input),
            replay,
            step,
            dt,
            &self.config.prediction,
        ) {
            self.stats.corrections += 1;
            self.events.push_back(ClientEvent::Corrected {
                entity: id,
                distance_m,
            });
        }
    }

    /// Send every unacknowledged input (up to the per-packet limit) and a pending resync
    /// request in one datagram.
    fn send_frame(&mut self, now: Instant) {
        // The inputs are kept oldest first, so those not acknowledged are the newest.
        let acked = self.acked_input;
        let from = self
            .pending
            .partition_point(|p| acked.is_some_and(|a| p.tick <= a));
        // Oldest first: the server takes inputs only in order, so a newer one is no use to
        // it before the older ones. Normally far fewer than the limit are unacknowledged.
        let limit = self.config.max_inputs_per_packet.min(MAX_INPUTS_PER_FRAME);
        let mut take = (self.pending.len() - from).min(limit);
        let resync = self.want_resync;
        loop {
            let frame = InputFrameOut {
                resync,
                first_tick: if take > 0 { self.pending[from].tick } else { 0 },
                inputs: Unacked {
                    pending: &self.pending,
                    inputs: from..from + take,
                },
            };
            self.frame.clear();
            match codec::encode_into(&frame, &mut self.frame) {
                Ok(()) if self.frame.len() <= MAX_DATAGRAM_BYTES || take == 0 => break,
                // Too big for one datagram: carry fewer of the older inputs.
                Ok(()) => take /= 2,
                Err(_) => return,
            }
        }
        if self.frame.len() > MAX_DATAGRAM_BYTES {
            return;
        }
        if self.conn.send_datagram(now, &self.frame).is_ok() {
            self.last_frame_at = Some(now);
            self.stats.input_packets_sent += 1;
            if resync {
                self.want_resync = false;
                self.resync_at = Some(now);
                self.stats.resyncs_requested += 1;
            }
        }
    }
}
