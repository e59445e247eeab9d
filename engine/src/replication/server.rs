//! The replication server: one connection endpoint, one snapshot sender per client.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::config::{ConfigError, ServerConfig, SnapshotDelivery, with_control_channel};
use super::interest::{Interest, MAX_PHASES, RoomId, Scope, ScopedWorld};
use super::wire::{
    ClientControl, ControlMsg, InputFrame, MAX_INPUTS_PER_FRAME, QuantizeWire, WelcomeWire,
    write_part_prefix,
};
use super::{InputTick, REPLICATION_VERSION};

use std::sync::Mutex;

use crate::Sequence;
use crate::channel;
use crate::codec;
use crate::connection::{self, ClientId, ConnectionStats, DisconnectReason, Event, SendError};
use crate::packet::DisconnectReasonCode;
use crate::snapshot::Limits;
use crate::snapshot::shared::SharedDeltas;
use crate::snapshot::{
    EncodeScratch, EntityId, Parts, QuantizeCache, QuantizedWorld, SenderConfig, SenderStats,
    SharedSnapshot, SnapshotError, SnapshotSender, Tick, TickWorld, World, add_stats,
};

/// What happened on the server, for the game.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A client completed the handshake. Give it an entity with
    /// [`Server::set_owned_entity`] before the next [`Server::tick`] and its welcome says so.
    ClientJoined {
        /// Its id.
        client: ClientId,
    },
    /// A client is gone; nothing more is sent to it.
    ClientLeft {
        /// Its id.
        client: ClientId,
        /// Why.
        reason: DisconnectReason,
    },
    /// One input of a client, handed over exactly once and in tick order. Apply it before
    /// the next [`Server::tick`]: the snapshot of that tick tells the client its inputs up
    /// to this one are in the state.
    Input {
        /// Whose.
        client: ClientId,
        /// The tick the client produced it for.
        tick: InputTick,
        /// The input as the client encoded it. [`Server::recycle_input`] takes the buffer
        /// back once read.
        bytes: Vec<u8>,
    },
    /// A message on one of the game's channels.
    Message {
        /// From whom.
        client: ClientId,
        /// The game channel index.
        channel: u8,
        /// Its bytes.
        bytes: Vec<u8>,
    },
}

/// What the server knows about one client.
#[derive(Debug, Clone)]
pub struct ClientSummary {
    /// Link figures (RTT, loss, bytes).
    pub connection: Option<ConnectionStats>,
    /// What its snapshot sender produced.
    pub snapshots: SenderStats,
    /// True once the client took its welcome (snapshots flow from then on).
    pub ready: bool,
    /// The entity it owns.
    pub owned: Option<EntityId>,
    /// Its snapshot budget per send, bytes.
    pub budget_bytes: usize,
    /// New inputs received (each counted once, however many packets carried it).
    pub inputs_received: u64,
    /// Inputs handed to the game.
    pub inputs_applied: u64,
    /// The newest input handed to the game.
    pub last_applied_input: Option<InputTick>,
    /// Input packets that did not decode or broke a limit.
    pub invalid_input_frames: u64,
    /// Full snapshots it asked for because it lacked a baseline.
    pub resyncs: u64,
}

#[derive(Debug)]
struct Peer {
    sender: SnapshotSender,
    welcomed: bool,
    ready: bool,
    owned: Option<EntityId>,
    owned_changed: bool,
    budget_bytes: usize,
    queue: VecDeque<(InputTick, Vec<u8>)>,
    newest_taken: Option<InputTick>,
    last_applied: Option<InputTick>,
    tokens: u32,
    inputs_received: u64,
    inputs_applied: u64,
    invalid_input_frames: u64,
    resyncs: u64,
    scope: Scope,
    /// The ticks this client is sent snapshots on: those whose number modulo the send
    /// interval is this.
    phase: u32,
}

impl Peer {
    /// Ask for the memory this client's next snapshot reads first to be brought into the
    /// caches (see [`crate::prefetch`]).
    fn prefetch(&mut self) {
        self.scope.prefetch();
        self.sender.prefetch();
    }

    /// Ask for this client's own fields to be brought into the caches, a client before
    /// [`Self::prefetch`] reads them to find its lists.
    fn prefetch_fields(&self) {
        crate::prefetch::value(self);
        crate::prefetch::value(&self.owned);
        crate::prefetch::value(&self.phase);
        self.scope.prefetch_fields();
        self.sender.prefetch_fields();
    }
}

/// `build` each client in turn, asking for the next one's memory ahead: a client's own
/// state is cold by its turn (a thousand others were built since), and its misses then
/// overlap the work on the client before it. The one after the next has its own fields
/// asked for, so that asking for the next one's lists does not wait on reading them
/// (docs/BENCHMARKS.md, "Two clients ahead"). Each client comes back with what was built.
fn ahead<T>(
    jobs: Vec<(ClientId, &mut Peer)>,
    mut build: impl FnMut(&mut Peer) -> T,
) -> impl Iterator<Item = (ClientId, &mut Peer, T)> {
    let mut jobs = jobs.into_iter();
    // The next client, whose lists are asked for, and the one after, whose own fields are
    // (the lists are found through them).
    let mut next = jobs.next();
    std::iter::from_fn(move || {
        let (id, peer) = next.take()?;
        next = jobs.next();
        if let Some((_, after)) = jobs.as_slice().first() {
            after.prefetch_fields();
        }
        if let Some((_, soon)) = next.as_mut() {
            soon.prefetch();
        }
        let built = build(peer);
        Some((id, peer, built))
    })
}

/// Clients a snapshot thread takes from a queue at a time (see [`build_on_pool`]): enough
/// that the queues' locks cost nothing beside the builds (about 60 a tick at 1,000
/// clients), few enough that a thread done with its own share finds work left in another.
const BUILD_CHUNK: usize = 16;

/// Build every job on the pool's threads and the calling one, chunk by chunk with
/// `build_chunk`, and hand what was built to `consume` on the calling thread, in the jobs'
/// order, as soon as every job before it is built.
///
/// The jobs are cut into chunks of up to [`BUILD_CHUNK`], dealt out in turn: the calling
/// thread (0) has chunks 0, T, 2T…, pool thread t chunks t, T + t… (T threads). Each thread
/// starts on the same share every tick, so a client's sender state stays in the caches of
/// the core that used it last: work stealing from the start moved clients between threads
/// from tick to tick and was slower. But fixed shares left one thread idle at the end of the
/// build, 16 % of it on average (a share's clients cost more than the other's, or the host
/// slowed a core for a while), and the tick waited for the slower. So each share is a queue:
/// a thread takes its own chunks from the front and, when it has none left, the others'
/// from the back. The bytes sent do not depend on which thread built a client (see
/// [`SharedDeltas`]).
///
/// The calling thread consumes (sends) what is built between its own builds, while the
/// pool's threads go on building, and takes fewer chunks for it: they take over its last
/// ones. Dealt out in turn, the chunks after each of its own are most often built by the
/// time it looks, so the sends go on through the build; with contiguous shares, the pool's
/// half waited for the calling thread's and was sent after the build (measured: the tick's
/// p99 a few points higher, docs/BENCHMARKS.md).
fn build_on_pool<J: Send, T: Send>(
    pool: &rayon::ThreadPool,
    jobs: Vec<J>,
    build_chunk: &(impl Fn(Vec<J>) -> Vec<T> + Sync),
    mut consume: impl FnMut(T),
) {
    /// A thread's share: chunks of jobs, each with its place in the list.
    type Queue<J> = Mutex<VecDeque<(usize, Vec<J>)>>;
    let threads = pool.current_num_threads() + 1;
    // Every thread has a chunk of its own when there are as many jobs as threads.
    let size = BUILD_CHUNK.min(jobs.len().div_ceil(threads)).max(1);
    let n = jobs.len().div_ceil(size);
    // Chunks of `size` jobs each, taken in turn. Splitting the rest off again and again
    // copied what was left each time: at 1,000 clients, half a megabyte a tick in fresh
    // memory, whose page faults took 14 % of the calling thread's tick on two threads and
    // made one tick in seven take twice as long (docs/BENCHMARKS.md).
    let mut jobs = jobs.into_iter();
    let chunks: Vec<Vec<J>> = (0..n).map(|_| jobs.by_ref().take(size).collect()).collect();
    let mut queues: Vec<VecDeque<(usize, Vec<J>)>> =
        (0..threads).map(|_| VecDeque::new()).collect();
    for (c, chunk) in chunks.into_iter().enumerate() {
        queues[c % threads].push_back((c, chunk));
    }
    let queues: Vec<Queue<J>> = queues.into_iter().map(Mutex::new).collect();
    let take = |t: usize| {
        let take = |queue: &Queue<J>, own: bool| {
            let mut queue = queue.lock().unwrap_or_else(|e| e.into_inner());
            if own {
                queue.pop_front()
            } else {
                queue.pop_back()
            }
        };
        take(&queues[t], true)
            .or_else(|| (1..threads).find_map(|d| take(&queues[(t + d) % threads], false)))
    };
    // What each chunk built, by its place, until consumed.
    let built: Mutex<Vec<Option<Vec<T>>>> = Mutex::new((0..n).map(|_| None).collect());
    let put = |c: usize, chunk: Vec<T>| {
        built.lock().unwrap_or_else(|e| e.into_inner())[c] = Some(chunk);
    };
    // The first chunk not consumed yet.
    let mut next = 0;
    // The chunks taken out to be consumed (outside the lock), one list for every call.
    let mut ready: Vec<Vec<T>> = Vec::new();
    // Consume the built chunks from `next` on, up to the first not built yet.
    let mut consume_built = || {
        {
            let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
            while let Some(chunk) = built.get_mut(next).and_then(Option::take) {
                ready.push(chunk);
                next += 1;
            }
        }
        ready.drain(..).flatten().for_each(&mut consume);
    };
    pool.in_place_scope(|scope| {
        scope.spawn_broadcast(|_, ctx| {
            while let Some((c, chunk)) = take(ctx.index() + 1) {
                put(c, build_chunk(chunk));
            }
        });
        while let Some((c, chunk)) = take(0) {
            put(c, build_chunk(chunk));
            consume_built();
        }
    });
    // Every chunk is built once the scope has ended.
    consume_built();
}

/// Server-wide counters of the replication layer (the connection keeps its own).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReplicationStats {
    /// Input packets that did not decode or broke a limit.
    pub invalid_input_frames: u64,
    /// Control messages that did not decode.
    pub invalid_control: u64,
    /// Entities in the newest world sent.
    pub entities: usize,
    /// Worlds quantized (one per send tick with a ready client).
    pub worlds: u64,
    /// Sum over worlds after the first of the share of entities whose quantized state
    /// changed since the previous world sent.
    pub changed_share_sum: f64,
    /// Snapshots built from a client's own scope (rooms or an area of interest).
    pub scoped_snapshots: u64,
    /// Entities in those scopes, summed over the snapshots.
    pub scoped_entities: u64,
    /// Snapshots sent as built for another client: both held the same baseline, and the
    /// snapshot carried every difference from it, so it was encoded once for both.
    pub shared_snapshots: u64,
    /// Send ticks on which clients with their own scopes shared entity encodings (see
    /// [`SHARE_MIN_VIEWERS`]).
    pub shared_encoding_ticks: u64,
    /// Entity deltas encoded at the start of a send tick, in world order, for the baseline
    /// ages enough clients hold that nearly every such delta is read (the rest are encoded
    /// by the first client that needs one), summed over the ticks.
    pub deltas_encoded_up_front: u64,
    /// Scoped snapshots whose scope was worked out anew from every entity near the client's
    /// view point (or from its rooms). Between such scans an area of interest is kept by
    /// measuring only the entities near its edge (and the few that leapt far), so this share
    /// of `scoped_snapshots` is what a scope costs: a crowd that runs fast, more than a
    /// hundred entities leaping far or arriving each tick, or rooms in use keep it near
    /// 100 %.
    pub scope_scans: u64,
}

impl ReplicationStats {
    /// Mean share of entities whose quantized state changed between worlds sent, percent.
    pub fn changed_pct(&self) -> f64 {
        if self.worlds < 2 {
            0.0
        } else {
            self.changed_share_sum / (self.worlds - 1) as f64 * 100.0
        }
    }

    /// Mean entities in a client's scope per snapshot (0 when every client sees everything).
    pub fn mean_scope(&self) -> f64 {
        if self.scoped_snapshots == 0 {
            0.0
        } else {
            self.scoped_entities as f64 / self.scoped_snapshots as f64
        }
    }

    /// Share of scoped snapshots whose scope was a scan ([`Self::scope_scans`]), percent.
    pub fn scope_scan_pct(&self) -> f64 {
        if self.scoped_snapshots == 0 {
            0.0
        } else {
            self.scope_scans as f64 / self.scoped_snapshots as f64 * 100.0
        }
    }
}

/// The sans-IO replication server; see the [module docs](super).
#[derive(Debug)]
pub struct Server {
    conn: connection::Server,
    config: ServerConfig,
    pub(super) control: u8,
    /// A sender built from the checked config, cloned for each client.
    proto_sender: SnapshotSender,
    tick: Tick,
    peers: BTreeMap<ClientId, Peer>,
    events: VecDeque<ServerEvent>,
    /// Input buffers the game handed back ([`Self::recycle_input`]), for the next inputs.
    spare_inputs: Vec<Vec<u8>>,
    departed: SenderStats,
    stats: ReplicationStats,
    /// The previous world sent, to measure how much changes per send and to find each
    /// entity's change age.
    previous_world: Option<TickWorld>,
    /// Reused buffer for prefixed parts.
    datagram: Vec<u8>,
    /// Stand-in sequences for parts on the reliable channel (delivered once queued).
    reliable_part_seq: Sequence,
    /// Rooms and the area of interest.
    interest: Interest,
    /// Last tick's quantization, so unchanged entities are not quantized again.
    quantize_cache: QuantizeCache,
    /// Threads that build snapshots beside the calling thread, when the config asks for
    /// more than one in all.
    pool: Option<rayon::ThreadPool>,
    /// Entities in the last send tick's scopes per entity of its world.
    viewers_per_entity: f64,
    /// What scoped clients share.
    sharing: Sharing,
}

/// The codes and entity deltas scoped clients share, and the worlds they are measured from.
#[derive(Debug)]
struct Sharing {
    /// This tick's shared codes and entity deltas.
    deltas: SharedDeltas,
    scratch: EncodeScratch,
    /// The last worlds sent (oldest first), to choose the codes.
    history: VecDeque<TickWorld>,
    /// [`SHARE_MIN_VIEWERS`], or another threshold in tests.
    min_viewers: f64,
}

impl Sharing {
    /// Fix this tick's shared codes, when sharing pays (see [`SHARE_MIN_VIEWERS`]): one per
    /// baseline age that two or more of the tick's ready clients hold, and one for spawns.
    /// Returns the ages whose deltas are best encoded up front (see [`EAGER_MIN_VIEWERS`]),
    /// or `None` when not sharing. The deltas are encoded from the history as it is now:
    /// [`Self::remember`] the tick's world after.
    fn prepare(
        &mut self,
        tick_world: &TickWorld,
        phase: u32,
        peers: &BTreeMap<ClientId, Peer>,
        interval: u32,
        lim: &Limits,
        viewers_per_entity: f64,
    ) -> Option<Vec<u32>> {
        let tick = tick_world.tick;
        if viewers_per_entity < self.min_viewers {
            // No sections: every lookup misses. Worlds are kept only while sharing (one of
            // 10,000 entities is about 0.6 MB); the first ticks after sharing starts code
            // only the spawns and the ages kept so far.
            self.deltas
                .prepare(tick_world, &[], &[], lim, &mut self.scratch);
            self.history.clear();
            return None;
        }
        let mut ages: BTreeMap<u32, usize> = BTreeMap::new();
        // This tick's clients: those of other phases read nothing encoded now.
        let mut ready = 0;
        for p in peers.values().filter(|p| p.ready && p.phase == phase) {
            ready += 1;
            if let Some(t) = p.sender.acked_tick() {
                let k = tick.0.saturating_sub(t.0);
                if k > 0 && k as usize <= SHARED_HISTORY_SENDS * interval as usize {
                    *ages.entry(k).or_default() += 1;
                }
            }
        }
        // Ages whose clients together see the changed entities of the world about once or
        // more: nearly all of those deltas will be read, so they are encoded up front.
        let eager: Vec<u32> = ages
            .iter()
            .filter(|&(_, &n)| {
                n >= 2 && viewers_per_entity * n as f64 >= EAGER_MIN_VIEWERS * ready as f64
            })
            .map(|(&k, _)| k)
            .collect();
        let mut ticks: Vec<u32> = ages
            .into_iter()
            .filter(|&(_, n)| n >= 2)
            .map(|(k, _)| k)
            .collect();
        if ready >= 2 {
            ticks.push(0);
        }
        self.history.make_contiguous();
        let history = self.history.as_slices().0;
        self.deltas
            .prepare(tick_world, history, &ticks, lim, &mut self.scratch);
        Some(eager)
    }

    /// Keep the tick's world for the codes of the ticks after, dropping the oldest beyond
    /// [`SHARED_HISTORY_SENDS`] per phase in use.
    fn remember(&mut self, tick_world: &TickWorld, interval: u32) {
        let kept = SHARED_HISTORY_SENDS * (interval as usize).min(MAX_PHASES);
        while self.history.len() >= kept {
            self.history.pop_front();
        }
        self.history.push_back(tick_world.clone());
    }
}

/// Worlds kept for shared codes, per phase of the send interval: a client's baseline older
/// than this many of its sends codes alone.
const SHARED_HISTORY_SENDS: usize = 8;

/// Clients with their own scopes share entity encodings once the last send tick's scopes
/// held at least this many entities per entity of the world (each entity seen by this many
/// clients on average).
///
/// Sharing has a cost of its own each tick (a code per baseline age, chosen from a sample of
/// the world, and a slot per entity), and a lookup that finds no one encoded the entity yet
/// costs a little more than encoding alone, so it pays only when entities are seen by more
/// than one client. On the `massive` scene (docs/BENCHMARKS.md), sharing on every tick cost
/// 13 % more at 16 clients (0.5 viewers per entity), the same at 64 (2), and saved a fifth
/// of the tick at 256 (8.5).
pub const SHARE_MIN_VIEWERS: f64 = 2.0;

/// A baseline age's shared deltas are all encoded at the start of the tick, in world order
/// (on several threads, each a range of the world), when the clients of that age hold at
/// least this many entities per entity of the world (see `SharedDeltas::fill`); otherwise
/// each is encoded when a client first needs it. On the `massive` scene
/// (docs/BENCHMARKS.md) this took 5–15 % off the tick at 64, 256 and 1,000 clients on one
/// thread, most of it in the loss run, where a tenth of the clients hold a baseline one tick
/// older than the rest and each used to encode a share of its section; on two threads, 4–8 %
/// at 1,000 clients and 60 Hz, with the index built meanwhile.
const EAGER_MIN_VIEWERS: f64 = 1.0;

/// Entities of the world a thread fills at a time (see [`Server::index_and_share`]): a tenth
/// of the `massive` scene's world, so that the threads finish within a run of each other.
#[cfg(not(test))]
const FILL_RUN: usize = 1024;
/// (Runs of a few entities in tests, whose worlds are small.)
#[cfg(test)]
const FILL_RUN: usize = 8;

impl Server {
    /// A server whose clock starts at `now`; fails when the config is unusable.
    pub fn new(config: ServerConfig, now: Instant) -> Result<Self, ConfigError> {
        let control = config.validate()?;
        let proto_sender = SnapshotSender::new(SenderConfig {
            quantize: config.quantize,
            max_part_bytes: config.max_part_bytes,
            ring_ticks: config.ring_ticks,
            ..SenderConfig::default()
        })?;
        let mut inner = config.server.clone();
        inner.connection.channels = with_control_channel(&inner.connection.channels)?.0;
        let seed = config.seed.unwrap_or_else(rand::random);
        let interest = config.interest;
        // The calling thread builds a share too, so the pool holds one thread fewer than
        // the config's count (0: one per core).
        let threads = match config.snapshot_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let pool = match threads {
            1 => None,
            n => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n - 1)
                    .thread_name(|i| format!("snapsync-snapshots-{i}"))
                    .build()
                    .map_err(|_| ConfigError::Invalid("cannot start the snapshot threads"))?,
            ),
        };
        Ok(Self {
            conn: connection::Server::new(inner, now, seed)?,
            config,
            control,
            proto_sender,
            tick: Tick(0),
            peers: BTreeMap::new(),
            events: VecDeque::new(),
            spare_inputs: Vec::new(),
            departed: SenderStats::default(),
            stats: ReplicationStats::default(),
            previous_world: None,
            datagram: Vec::with_capacity(connection::MAX_DATAGRAM_BYTES),
            reliable_part_seq: Sequence(0),
            interest: Interest::new(interest),
            quantize_cache: QuantizeCache::default(),
            pool,
            viewers_per_entity: 0.0,
            sharing: Sharing {
                deltas: SharedDeltas::default(),
                scratch: EncodeScratch::default(),
                history: VecDeque::new(),
                min_viewers: SHARE_MIN_VIEWERS,
            },
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The connection endpoint underneath, for its counters.
    pub fn connection(&self) -> &connection::Server {
        &self.conn
    }

    /// The newest tick run (0 before the first [`tick`](Self::tick)).
    pub fn current_tick(&self) -> Tick {
        self.tick
    }

    /// Feed one received datagram; invalid ones are dropped and counted, never a panic.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.conn.handle_datagram(now, from, datagram);
        self.pump();
    }

    /// Advance timers: keep-alives, loss detection, timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.conn.handle_timeout(now);
        self.pump();
    }

    /// The stream carrying `peer`'s packets (TCP or WebSocket) closed: its client leaves
    /// now ([`connection::Server::stream_closed`]) rather than at its timeout.
    pub fn stream_closed(&mut self, now: Instant, peer: SocketAddr) {
        self.conn.stream_closed(now, peer);
        self.pump();
    }

    /// Next datagram to send, written to `buf` (at least
    /// [`MAX_PACKET_BYTES`](crate::packet::MAX_PACKET_BYTES) long).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<connection::Transmit> {
        let t = self.conn.poll_transmit(now, buf);
        self.pump();
        t
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conn.poll_timeout()
    }

    /// Hand back an [`ServerEvent::Input`]'s bytes once read: a later input is copied into
    /// their memory instead of a new buffer. A server takes an input a tick from every
    /// player. Optional; a game that keeps the bytes loses nothing but the reuse.
    pub fn recycle_input(&mut self, bytes: Vec<u8>) {
        // Enough for every player's input of a few ticks; a buffer larger than an input may
        // be (or than the least room a vector of bytes is given) is not one this server made.
        let most = (4 * self.config.server.max_clients).max(64);
        let largest = self.config.max_input_bytes.max(64);
        if self.spare_inputs.len() < most && bytes.capacity() <= largest {
            self.spare_inputs.push(bytes);
        }
    }

    /// Next event, oldest first. Taking an [`ServerEvent::Input`] marks it applied.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        let e = self.events.pop_front()?;
        if let ServerEvent::Input { client, tick, .. } = &e
            && let Some(p) = self.peers.get_mut(client)
        {
            p.last_applied = Some(*tick);
            p.inputs_applied += 1;
        }
        Some(e)
    }

    /// Run one tick: `world` is the state after this tick's inputs and simulation. Sends
    /// welcomes and owner changes, and on a send tick a snapshot to every ready client.
    /// Returns the tick's number.
    pub fn tick(&mut self, now: Instant, world: &World) -> Tick {
        self.tick = self.tick.next();
        let tick = self.tick;
        let burst = self.config.max_input_burst;
        for (&id, peer) in self.peers.iter_mut() {
            peer.tokens = (peer.tokens + 1).min(burst);
            release_inputs(id, peer, &mut self.events);
            if !peer.welcomed {
                let welcome = ControlMsg::Welcome(WelcomeWire {
                    version: REPLICATION_VERSION,
                    client_id: id.0,
                    owned: peer.owned.map(|e| e.0),
                    server_tick: tick.0,
                    send_interval_ticks: self.config.send_interval_ticks,
                    ring_ticks: self.config.ring_ticks,
                    quantize: QuantizeWire::from(&self.config.quantize),
                    app: self.config.welcome_data.clone(),
                });
                peer.welcomed = send_control(&mut self.conn, now, id, self.control, &welcome);
                peer.owned_changed = false;
            } else if peer.owned_changed {
                let msg = ControlMsg::Owned(peer.owned.map(|e| e.0));
                peer.owned_changed = !send_control(&mut self.conn, now, id, self.control, &msg);
            }
        }
        let phase = tick.0 % self.config.send_interval_ticks;
        if self.peers.values().any(|p| p.ready && p.phase == phase) {
            let quantized = QuantizedWorld::from_world_cached_on(
                world,
                &self.config.quantize,
                &mut self.quantize_cache,
                self.pool.as_ref(),
            );
            // The cache's last call before this one quantized the previous world (both are
            // done on send ticks alone, here): when it found the same entities, it knows
            // which of them moved.
            let cache = &self.quantize_cache;
            let quantized = match (&self.previous_world, cache.moved(), cache.carried()) {
                (Some(previous), Some(moved), _) if previous.world.len() == quantized.len() => {
                    TickWorld::moved_on(quantized, tick, previous, moved)
                }
                // Entities came or went (a spawn, a projectile, a player who left): the
                // cache knows where each one was and which moved.
                (Some(previous), _, Some(carried))
                    if carried.0.len() == quantized.len() && carried.1 == previous.world.len() =>
                {
                    TickWorld::carried_on(quantized, tick, previous, carried)
                }
                (previous, _, _) => TickWorld::new(quantized, tick, previous.as_ref()),
            };
            self.count_changes(&quantized);
            if self.interest.active() {
                self.index_and_share(&quantized, phase);
            }
            self.send_snapshots(now, tick, phase, &quantized);
            self.previous_world = Some(quantized);
        }
        tick
    }

    fn count_changes(&mut self, world: &TickWorld) {
        self.stats.worlds += 1;
        self.stats.entities = world.world.len();
        if self.previous_world.is_some() && !world.world.is_empty() {
            let changed = world.changed_now();
            self.stats.changed_share_sum += changed as f64 / world.world.len() as f64;
        }
    }

    /// Build and send the snapshots of the ready clients whose phase is `phase`.
    fn send_snapshots(&mut self, now: Instant, tick: Tick, phase: u32, tick_world: &TickWorld) {
        let world = &tick_world.world;
        let scoped = self.interest.active();
        let interest = &self.interest;
        let shared = &self.sharing.deltas;
        // One scoped client's snapshot.
        let build = |peer: &mut Peer| {
            let ScopedWorld {
                world,
                weights,
                scanned,
            } = interest.scope(tick_world, peer.owned, &mut peer.scope, || {
                peer.sender.spare_picks()
            });
            let in_scope = world.len();
            peer.sender.stock_spare_picks(in_scope);
            let built = peer.sender.build_weighted(
                tick,
                world,
                peer.budget_bytes,
                weights.as_ref().map(|w| w as _),
                Some(shared),
            );
            Snapshot {
                parts: built.map(Built::Own),
                in_scope,
                scanned,
            }
        };
        let jobs: Vec<(ClientId, &mut Peer)> = self
            .peers
            .iter_mut()
            .filter(|(_, p)| p.ready && p.phase == phase)
            .map(|(id, p)| (*id, p))
            .collect();
        let mut in_view = 0;
        // Send one client's snapshot.
        let mut send = |(id, peer, snapshot): (ClientId, &mut Peer, Snapshot),
                        next: Option<(ClientId, &Snapshot)>| {
            // The next client's connection and parts are asked for now, so that their
            // misses overlap this send (docs/BENCHMARKS.md, "The next client's send asked
            // for ahead").
            if let Some((next_id, next_snapshot)) = next {
                self.conn.prefetch_send(next_id);
                if let Ok(parts) = &next_snapshot.parts {
                    for part in parts.parts() {
                        crate::prefetch::slice(part);
                    }
                }
            }
            let Snapshot {
                parts,
                in_scope,
                scanned,
            } = snapshot;
            if scoped {
                self.stats.scoped_snapshots += 1;
                self.stats.scoped_entities += in_scope as u64;
                self.stats.scope_scans += u64::from(scanned);
                in_view += in_scope;
            }
            // Ticks only grow, so the one refusal `build` has cannot happen.
            let Ok(parts) = parts else {
                return;
            };
            let ack = peer.last_applied;
            for (i, part) in parts.parts().iter().enumerate() {
                match self.config.delivery {
                    SnapshotDelivery::Datagrams => {
                        write_part_prefix(&mut self.datagram, tick.0, ack);
                        self.datagram.extend_from_slice(part);
                        if let Ok(seq) = self.conn.send_datagram(now, id, &self.datagram) {
                            peer.sender.on_part_sent(tick, i, seq);
                        }
                    }
                    SnapshotDelivery::ReliableOrdered => {
                        let msg = ControlMsg::Part {
                            input_ack: ack,
                            bytes: part.clone(),
                        };
                        if send_control(&mut self.conn, now, id, self.control, &msg) {
                            // An ordered reliable channel delivers what it accepts: the
                            // part is as good as acknowledged once queued.
                            let seq = self.reliable_part_seq;
                            self.reliable_part_seq = seq.next();
                            peer.sender.on_part_sent(tick, i, seq);
                            peer.sender.on_delivery(seq, true);
                        }
                    }
                }
            }
            if let Built::Own(parts) = parts {
                peer.sender.recycle_parts(parts);
            }
        };
        if scoped && let Some(pool) = &self.pool {
            // Each client's scope and snapshot depend on that client alone, so they are
            // built on the pool's threads and this one; all are sent from here, in id
            // order, while the pool's threads go on building.
            build_on_pool(
                pool,
                jobs,
                &|chunk| ahead(chunk, &build).collect(),
                // (Sent as each is built: there is no next one to ask for yet.)
                &mut |built| send(built, None),
            );
        } else {
            // On one thread, every snapshot is built before the first is sent: sent between
            // the builds, they cost the arena's tick 9 % more at p50 (docs/BENCHMARKS.md).
            let built = if scoped {
                // (`ahead` cannot tell its length: a plain collect grew the list about ten
                // times a tick at 1,000 clients, each time in new memory.)
                let mut built = Vec::with_capacity(jobs.len());
                built.extend(ahead(jobs, build));
                built
            } else {
                build_shared(jobs, tick, world, &mut self.stats.shared_snapshots)
            };
            let mut built = built.into_iter().peekable();
            while let Some(snapshot) = built.next() {
                let next = built.peek().map(|(id, _, s)| (*id, s));
                send(snapshot, next);
            }
        }
        if scoped {
            self.viewers_per_entity = in_view as f64 / world.len().max(1) as f64;
        }
    }

    /// Share encodings from `viewers` per entity instead of [`SHARE_MIN_VIEWERS`] (tests:
    /// 0 shares on every tick).
    #[cfg(test)]
    pub(crate) fn share_encodings_from(&mut self, viewers: f64) {
        self.sharing.min_viewers = viewers;
    }

    /// Index the tick's positions for the area of interest, and fix the shared codes and
    /// the deltas encoded up front (see [`Sharing::prepare`]). With a pool, the index is
    /// built there while this thread chooses the codes; then both fill the deltas encoded
    /// up front, a run of the world at a time (each read as runs of memory), taking the next
    /// run as they finish one. The pool's threads would otherwise wait while the index and
    /// the codes are made (0.75 ms of a 7 ms tick at 1,000 clients and 60 Hz), and the
    /// deltas would be encoded on first lookup, in the scattered order of each scope:
    /// together, 4–8 % of the tick at p50. A pool thread goes on from the index to the fill
    /// without this thread waiting for it in between, and the runs even out what the
    /// threads take (docs/BENCHMARKS.md, "The shared step in runs").
    fn index_and_share(&mut self, tick_world: &TickWorld, phase: u32) {
        let Self {
            interest,
            quantize_cache,
            pool,
            sharing,
            peers,
            config,
            stats,
            viewers_per_entity,
            ..
        } = self;
        // The positions from the cache the world was just quantized with: a list, where the
        // world is a map.
        let positions = quantize_cache.transforms().map(|t| t.position);
        let index = || interest.index(positions, &tick_world.ids, phase as usize);
        let lim = config.quantize.limits();
        let interval = config.send_interval_ticks;
        let viewers = *viewers_per_entity;
        let len = tick_world.world.len();
        // Fill the sections of `ages`, a run of the world at a time, from the run `next`
        // names until none is left.
        let filled = AtomicUsize::new(0);
        let fill_runs = |sharing: &Sharing, ages: &[u32], next: &AtomicUsize| {
            let history = sharing.history.as_slices().0;
            let mut encoded = 0;
            loop {
                let start = next
                    .fetch_add(1, Ordering::Relaxed)
                    .saturating_mul(FILL_RUN);
                if start >= len {
                    break;
                }
                let range = start..(start + FILL_RUN).min(len);
                for &k in ages {
                    encoded += sharing
                        .deltas
                        .fill(tick_world, history, k, &lim, range.clone());
                }
            }
            filled.fetch_add(encoded, Ordering::Relaxed);
        };
        let next_run = AtomicUsize::new(0);
        // Below the threshold, choosing the codes is nothing to wait for: the index is built
        // here, without waking the pool's threads.
        let eager = match pool {
            Some(pool) if viewers >= sharing.min_viewers => pool.in_place_scope(|scope| {
                scope.spawn(move |_| index());
                let eager = sharing.prepare(tick_world, phase, peers, interval, &lim, viewers);
                let sharing: &Sharing = sharing;
                let (fill_runs, next_run) = (&fill_runs, &next_run);
                // No age to fill: the pool's threads have nothing to do but the index.
                if let Some(ages) = eager.as_ref().filter(|ages| !ages.is_empty()) {
                    // Each pool thread takes runs once it is free (the one with the index,
                    // after it).
                    for _ in 0..pool.current_num_threads() {
                        let theirs = ages.clone();
                        scope.spawn(move |_| fill_runs(sharing, &theirs, next_run));
                    }
                    fill_runs(sharing, ages, next_run);
                }
                eager
            }),
            _ => {
                index();
                let eager = sharing.prepare(tick_world, phase, peers, interval, &lim, viewers);
                if let Some(ages) = eager.as_ref().filter(|ages| !ages.is_empty()) {
                    fill_runs(sharing, ages, &next_run);
                }
                eager
            }
        };
        stats.deltas_encoded_up_front += filled.into_inner() as u64;
        if eager.is_some() {
            stats.shared_encoding_ticks += 1;
            sharing.remember(tick_world, interval);
        }
    }

    /// Give `client` an entity of its own (its avatar), or take it away. The client learns
    /// it in its welcome, or in a control message if it was welcomed already.
    pub fn set_owned_entity(&mut self, client: ClientId, entity: Option<EntityId>) {
        if let Some(p) = self.peers.get_mut(&client)
            && p.owned != entity
        {
            p.owned = entity;
            p.owned_changed = true;
        }
    }

    /// Change one client's snapshot budget per send, in bytes.
    pub fn set_budget(&mut self, client: ClientId, budget_bytes: usize) {
        if let Some(p) = self.peers.get_mut(&client) {
            p.budget_bytes = budget_bytes;
        }
    }

    /// Scale how fast `entity` gains priority for `client` (e.g. by distance).
    pub fn set_priority_weight(&mut self, client: ClientId, entity: EntityId, weight: f32) {
        if let Some(p) = self.peers.get_mut(&client) {
            p.sender.set_priority_weight(entity, weight);
        }
    }

    /// Where `client` sees from, for the area of interest (`None`: from the entity it owns).
    pub fn set_view_point(&mut self, client: ClientId, point: Option<glam::Vec3>) {
        if let Some(p) = self.peers.get_mut(&client) {
            p.scope.view_point = point;
        }
    }

    /// The entities in `client`'s scope as of the last snapshot sent to it, sorted by id;
    /// `None` when every client sees every entity (no rooms hold entities and no area of
    /// interest is configured).
    pub fn visible_entities(
        &self,
        client: ClientId,
    ) -> Option<impl ExactSizeIterator<Item = EntityId> + '_> {
        if !self.interest.active() {
            return None;
        }
        self.peers.get(&client).map(|p| p.scope.visible())
    }

    /// Put `client` in `room`: it sees the room's entities and gets its messages. Returns
    /// false for an unknown client.
    pub fn join_room(&mut self, client: ClientId, room: RoomId) -> bool {
        let Some(p) = self.peers.get_mut(&client) else {
            return false;
        };
        p.scope.rooms.insert(room);
        self.interest.join(room, client);
        true
    }

    /// Take `client` out of `room` (its entities leave the client's scope on the next send).
    pub fn leave_room(&mut self, client: ClientId, room: RoomId) {
        if let Some(p) = self.peers.get_mut(&client) {
            p.scope.rooms.remove(&room);
        }
        self.interest.leave(room, client);
    }

    /// The clients in `room`, in id order.
    pub fn room_members(&self, room: RoomId) -> impl Iterator<Item = ClientId> + '_ {
        self.interest.members(room)
    }

    /// Put `entity` in `room`. An entity in any room is seen only by clients in one of its
    /// rooms (and its owner); an entity in none is seen by everyone in range.
    pub fn add_entity_to_room(&mut self, entity: EntityId, room: RoomId) {
        self.interest.add_entity(entity, room);
    }

    /// Take `entity` out of `room`.
    pub fn remove_entity_from_room(&mut self, entity: EntityId, room: RoomId) {
        self.interest.remove_entity(entity, room);
    }

    /// Take `entity` out of every room, e.g. when the game removes it for good (room
    /// memberships are the game's to keep; the server does not drop them by itself).
    pub fn remove_entity_from_rooms(&mut self, entity: EntityId) {
        self.interest.forget_entity(entity);
    }

    /// The rooms `entity` is in.
    pub fn entity_rooms(&self, entity: EntityId) -> &[RoomId] {
        self.interest.entity_rooms(entity)
    }

    /// Let every client see `entity` wherever it is, or (`false`) put it back under the
    /// area of interest's distance: for what the whole map must know of, such as a
    /// scoreboard, a flag or a boss. Its rooms still decide who may see it. Takes effect on
    /// the next send; the mark is the game's to keep, as room memberships are (an entity
    /// that leaves the world and comes back under the same id is still marked). Each mark
    /// costs every send tick one lookup in the world, so unmark what the game removes for
    /// good.
    pub fn set_always_visible(&mut self, entity: EntityId, always: bool) {
        self.interest.set_always_visible(entity, always);
    }

    /// Whether `entity` is marked always visible ([`Self::set_always_visible`]).
    pub fn is_always_visible(&self, entity: EntityId) -> bool {
        self.interest.is_always_visible(entity)
    }

    /// Queue a message on game channel `channel` for every client in `room`; returns how
    /// many took it.
    pub fn send_to_room(&mut self, now: Instant, room: RoomId, channel: u8, bytes: &[u8]) -> usize {
        let ids: Vec<ClientId> = self.interest.members(room).collect();
        ids.into_iter()
            .filter(|&id| self.send_message(now, id, channel, bytes).is_ok())
            .count()
    }

    /// Queue a message on game channel `channel` for `client`.
    pub fn send_message(
        &mut self,
        now: Instant,
        client: ClientId,
        channel: u8,
        bytes: &[u8],
    ) -> Result<(), SendError> {
        if channel >= self.control {
            return Err(SendError::Channel(channel::SendError::UnknownChannel(
                channel,
            )));
        }
        self.conn.send_message(now, client, channel, bytes)
    }

    /// Queue a message on game channel `channel` for every client; returns how many took it.
    pub fn broadcast(&mut self, now: Instant, channel: u8, bytes: &[u8]) -> usize {
        let ids: Vec<ClientId> = self.peers.keys().copied().collect();
        ids.into_iter()
            .filter(|&id| self.send_message(now, id, channel, bytes).is_ok())
            .count()
    }

    /// Disconnect one client (it is told, redundantly).
    pub fn disconnect(&mut self, client: ClientId) {
        self.conn.disconnect(client, DisconnectReasonCode::Kicked);
    }

    /// Accept new clients or not (draining: new ones are denied, players stay).
    pub fn set_accepting(&mut self, accepting: bool) {
        self.conn.set_accepting(accepting);
    }

    /// Disconnect everyone, telling them the server shuts down; keep polling transmits until
    /// [`client_count`](Self::client_count) is zero to send the goodbyes.
    pub fn shutdown(&mut self) {
        self.conn.shutdown();
    }

    /// Connected clients, in id order.
    pub fn clients(&self) -> impl Iterator<Item = ClientId> + '_ {
        self.peers.keys().copied()
    }

    /// How many clients the connection layer holds (including ones saying goodbye).
    pub fn client_count(&self) -> usize {
        self.conn.client_count()
    }

    /// The entity `client` owns.
    pub fn owned_entity(&self, client: ClientId) -> Option<EntityId> {
        self.peers.get(&client).and_then(|p| p.owned)
    }

    /// What the server knows about one client.
    pub fn client_summary(&self, client: ClientId) -> Option<ClientSummary> {
        let p = self.peers.get(&client)?;
        Some(ClientSummary {
            connection: self.conn.connection_stats(client),
            snapshots: p.sender.stats(),
            ready: p.ready,
            owned: p.owned,
            budget_bytes: p.budget_bytes,
            inputs_received: p.inputs_received,
            inputs_applied: p.inputs_applied,
            last_applied_input: p.last_applied,
            invalid_input_frames: p.invalid_input_frames,
            resyncs: p.resyncs,
        })
    }

    /// Snapshot totals over every client, past and present.
    pub fn snapshot_totals(&self) -> SenderStats {
        let mut t = self.departed;
        for p in self.peers.values() {
            add_stats(&mut t, &p.sender.stats());
        }
        t
    }

    /// The replication layer's own counters.
    pub fn stats(&self) -> ReplicationStats {
        self.stats
    }

    fn pump(&mut self) {
        while let Some((id, e)) = self.conn.poll_event() {
            self.on_connection_event(id, e);
        }
    }

    /// The tick of the send interval the fewest clients are sent on (the first of those),
    /// among its first [`MAX_PHASES`]: enough to spread the builds, and each phase keeps
    /// its scopes' motion apart.
    fn quietest_phase(&self) -> u32 {
        let phases = (self.config.send_interval_ticks as usize).min(MAX_PHASES);
        let mut clients = [0usize; MAX_PHASES];
        for p in self.peers.values() {
            clients[p.phase as usize] += 1;
        }
        (0..phases).min_by_key(|&k| clients[k]).unwrap_or(0) as u32
    }

    fn on_connection_event(&mut self, id: ClientId, e: Event) {
        match e {
            Event::Connected { .. } => {
                let phase = self.quietest_phase();
                self.peers.insert(
                    id,
                    Peer {
                        sender: self.proto_sender.clone(),
                        welcomed: false,
                        ready: false,
                        owned: None,
                        owned_changed: false,
                        budget_bytes: self.config.budget_bytes,
                        queue: VecDeque::new(),
                        newest_taken: None,
                        last_applied: None,
                        tokens: self.config.max_input_burst,
                        inputs_received: 0,
                        inputs_applied: 0,
                        invalid_input_frames: 0,
                        resyncs: 0,
                        scope: Scope::default(),
                        phase,
                    },
                );
                self.events
                    .push_back(ServerEvent::ClientJoined { client: id });
            }
            Event::Disconnected { reason } => {
                if let Some(p) = self.peers.remove(&id) {
                    for room in &p.scope.rooms {
                        self.interest.leave(*room, id);
                    }
                    add_stats(&mut self.departed, &p.sender.stats());
                    self.events
                        .push_back(ServerEvent::ClientLeft { client: id, reason });
                }
            }
            Event::Datagram { payload, .. } => {
                self.on_input_frame(id, &payload);
                self.conn.recycle_payload(payload);
            }
            Event::Message {
                channel, payload, ..
            } if channel == self.control => match codec::decode::<ClientControl>(&payload) {
                Ok(ClientControl::Ready) => {
                    if let Some(p) = self.peers.get_mut(&id) {
                        p.ready = true;
                    }
                }
                Err(_) => self.stats.invalid_control += 1,
            },
            Event::Message {
                channel, payload, ..
            } => self.events.push_back(ServerEvent::Message {
                client: id,
                channel,
                bytes: payload,
            }),
            Event::Delivery { sequence, acked } => {
                if let Some(p) = self.peers.get_mut(&id) {
                    p.sender.on_delivery(sequence, acked);
                }
            }
        }
    }

    fn on_input_frame(&mut self, id: ClientId, payload: &[u8]) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let max_bytes = self.config.max_input_bytes;
        let frame = match codec::decode_borrowed::<InputFrame<'_>>(payload) {
            Ok(f)
                if f.inputs.len() <= MAX_INPUTS_PER_FRAME
                    && f.inputs.iter().all(|i| i.len() <= max_bytes) =>
            {
                f
            }
            _ => {
                peer.invalid_input_frames += 1;
                self.stats.invalid_input_frames += 1;
                return;
            }
        };
        // Only a welcomed client sends inputs: proof it can decode snapshots.
        peer.ready = true;
        if frame.resync {
            peer.sender.reset_baseline();
            peer.resyncs += 1;
        }
        for (i, bytes) in frame.inputs.iter().enumerate() {
            // i < MAX_INPUTS_PER_FRAME; a frame that would run past u32::MAX is cut there.
            let Some(tick) = frame.first_tick.checked_add(i as u32) else {
                break;
            };
            if peer.newest_taken.is_some_and(|n| tick <= n) {
                continue;
            }
            if peer.queue.len() >= self.config.max_queued_inputs {
                // Not taken: the client keeps sending it until it is acknowledged.
                break;
            }
            let mut owned = self.spare_inputs.pop().unwrap_or_default();
            owned.clear();
            owned.extend_from_slice(bytes);
            peer.queue.push_back((tick, owned));
            peer.newest_taken = Some(tick);
            peer.inputs_received += 1;
        }
        release_inputs(id, peer, &mut self.events);
    }
}

/// Build the snapshots of clients that are all sent the same world, in turn. Clients that
/// hold the same baseline get the same snapshot when it carries every difference (the
/// budget allowed it): it is encoded for the first of them and sent as is to the rest
/// (counted in `adopted`). At low loss most clients hold one of a few baselines, so this is
/// most of the work saved.
fn build_shared<'p>(
    jobs: Vec<(ClientId, &'p mut Peer)>,
    tick: Tick,
    world: &QuantizedWorld,
    adopted: &mut u64,
) -> Vec<(ClientId, &'p mut Peer, Snapshot)> {
    let mut shared: Vec<SharedSnapshot> = Vec::new();
    let mut built = Vec::with_capacity(jobs.len());
    for (id, peer) in jobs {
        let budget = peer.budget_bytes;
        let found = shared
            .iter()
            .find(|s| peer.sender.adopt(s, world, budget))
            .map(|s| s.parts.clone());
        let parts = match found {
            Some(parts) => {
                *adopted += 1;
                Ok(Built::Shared(parts))
            }
            None => peer
                .sender
                .build_shareable(tick, world, budget)
                .map(|(parts, s)| {
                    shared.extend(s);
                    Built::Shared(parts)
                }),
        };
        let snapshot = Snapshot {
            parts,
            in_scope: 0,
            scanned: false,
        };
        built.push((id, peer, snapshot));
    }
    built
}

/// One client's snapshot as built, to be sent.
struct Snapshot {
    parts: Result<Built, SnapshotError>,
    /// Entities in the client's scope (0 without scopes).
    in_scope: usize,
    /// Whether the scope was found by a scan of the world.
    scanned: bool,
}

/// One client's snapshot parts as built: its own, or shared with other clients.
enum Built {
    Own(Vec<Vec<u8>>),
    Shared(Parts),
}

impl Built {
    fn parts(&self) -> &[Vec<u8>] {
        match self {
            Built::Own(p) => p,
            Built::Shared(p) => p,
        }
    }
}

/// Hand queued inputs to the game while the client has tokens.
fn release_inputs(id: ClientId, peer: &mut Peer, events: &mut VecDeque<ServerEvent>) {
    while peer.tokens > 0 {
        let Some((tick, bytes)) = peer.queue.pop_front() else {
            break;
        };
        peer.tokens -= 1;
        events.push_back(ServerEvent::Input {
            client: id,
            tick,
            bytes,
        });
    }
}

fn send_control(
    conn: &mut connection::Server,
    now: Instant,
    id: ClientId,
    control: u8,
    msg: &ControlMsg,
) -> bool {
    codec::encode(msg).is_ok_and(|bytes| conn.send_message(now, id, control, &bytes).is_ok())
}

#[cfg(test)]
mod pool_tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a pool")
    }

    /// What `build_on_pool` hands on, in the order it did.
    fn built<J: Send, T: Send>(
        threads: usize,
        jobs: Vec<J>,
        build: &(impl Fn(Vec<J>) -> Vec<T> + Sync),
    ) -> Vec<T> {
        let mut out = Vec::new();
        build_on_pool(&pool(threads), jobs, build, |t| out.push(t));
        out
    }

    /// Wait (bounded) until `flag` is set; whether it was.
    fn wait_for(flag: &AtomicBool) -> bool {
        for _ in 0..30_000 {
            if flag.load(Ordering::Acquire) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn a_pool_builds_every_job_once_and_in_order() {
        for (threads, jobs) in [(1, 0), (1, 1), (1, 3), (2, 5), (1, 100), (3, 1000)] {
            let built = built(threads, (0..jobs).collect(), &|chunk: Vec<u32>| {
                chunk.iter().map(|j| j * 2).collect()
            });
            let want: Vec<u32> = (0..jobs).map(|j| j * 2).collect();
            assert_eq!(built, want, "{threads} pool threads, {jobs} jobs");
        }
    }

    #[test]
    fn a_thread_done_with_its_share_takes_what_another_has_left() {
        // Two threads, four chunks of 16 jobs: the calling thread's share is chunks 0 and
        // 2, the pool thread's 1 and 3. The calling thread holds on to its first job until
        // job 32 (chunk 2) is built, which only the pool thread can do: from the back of
        // the calling thread's queue, once its own share is built.
        let stolen = AtomicBool::new(false);
        let built = built(1, (0..64).collect(), &|chunk: Vec<u32>| {
            chunk
                .into_iter()
                .map(|j| {
                    let on_pool = rayon::current_thread_index().is_some();
                    if j == 0 {
                        // Bounded: should the pool thread never come, job 16 is built
                        // here after all, and the assertion below says so.
                        wait_for(&stolen);
                    }
                    if j == 32 && on_pool {
                        stolen.store(true, Ordering::Release);
                    }
                    (j, on_pool)
                })
                .collect()
        });
        let order: Vec<u32> = built.iter().map(|&(j, _)| j).collect();
        assert_eq!(order, (0..64).collect::<Vec<u32>>());
        for &(j, on_pool) in &built {
            // The calling thread built chunk 0; the pool thread its own share and chunk 2.
            assert_eq!(on_pool, j >= 16, "job {j}");
        }
    }

    #[test]
    fn the_calling_thread_hands_on_its_chunks_while_the_pool_still_builds() {
        // Two threads, four chunks of 16 jobs. The pool thread holds on to its first job
        // (16) until chunk 0 has been handed on: that happens during the build only if the
        // calling thread hands on what it built between its chunks.
        let handed_on = AtomicBool::new(false);
        let waited = AtomicBool::new(false);
        let mut order = Vec::new();
        build_on_pool(
            &pool(1),
            (0..64).collect(),
            &|chunk: Vec<u32>| {
                chunk
                    .into_iter()
                    .inspect(|&j| {
                        if j == 16 {
                            // Bounded: should chunk 0 never be handed on during the build,
                            // this goes on after 30 s and the assertion below says so.
                            waited.store(wait_for(&handed_on), Ordering::Release);
                        }
                    })
                    .collect()
            },
            |j| {
                if j == 15 {
                    handed_on.store(true, Ordering::Release);
                }
                order.push(j);
            },
        );
        assert_eq!(order, (0..64).collect::<Vec<u32>>());
        assert!(
            waited.load(Ordering::Acquire),
            "chunk 0 was handed on only after the pool's build"
        );
    }
}
