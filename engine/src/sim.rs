//! A deterministic network in a box: one [`Server`], many [`Client`]s, a seeded
//! [`Conditioner`] on every link direction, and a virtual clock.
//!
//! Tests and benches drive whole connections through it thousands of simulated seconds per
//! real second; the same seed gives the same run. Applications can use it too, to try their
//! game logic on a bad network without sockets.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use crate::conditioner::{Conditioner, ConditionerConfig};
use crate::connection::{Client, ClientConfig, ClientId, Server, ServerConfig};
use crate::net::Endpoint;
use crate::packet::{MAX_PACKET_BYTES, Packet};
use crate::replication;

/// Most rounds [`Sim::pump`] runs at one instant before it calls the network livelocked.
/// A healthy exchange settles in a handful (a request, its answer, the answer's ack).
pub const MAX_PUMP_ROUNDS: usize = 10_000;

/// Smallest step of the virtual clock when an endpoint asks to be woken "now" again.
const MIN_STEP: Duration = Duration::from_micros(100);

/// One simulated client with its two link directions.
#[derive(Debug)]
pub struct SimClient<C: Endpoint = Client> {
    /// The sans-IO client.
    pub client: C,
    /// Its (virtual) address.
    pub addr: SocketAddr,
    /// Events it produced, oldest first; tests drain this.
    pub events: Vec<C::Event>,
    /// Client → server direction.
    pub up: Conditioner<Vec<u8>>,
    /// Server → client direction.
    pub down: Conditioner<Vec<u8>>,
    /// While true, everything on both directions is dropped (a partition).
    pub partitioned: bool,
}

/// The server's (virtual) address in every [`Sim`]: what a secure server's config and its
/// connect tokens name.
pub const SERVER_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7777));

/// The simulated network: by default the connection layer's [`Server`] and [`Client`]s;
/// [`Sim::replication`] builds one of the [`replication`] endpoints a game uses.
#[derive(Debug)]
pub struct Sim<S: Endpoint = Server, C: Endpoint = Client> {
    /// Virtual now.
    pub now: Instant,
    /// The server.
    pub server: S,
    /// The server's (virtual) address.
    pub server_addr: SocketAddr,
    /// Events the server produced, oldest first; tests drain this.
    pub server_events: Vec<S::Event>,
    /// The clients, by index.
    pub clients: Vec<SimClient<C>>,
    /// Datagrams the server sent to addresses that are not simulated clients (e.g. replies
    /// to injected handshake packets), with their destinations.
    pub stray: Vec<(SocketAddr, Vec<u8>)>,
    /// Real time spent in the server's calls the network made ([`Sim::server_busy`]).
    server_busy: Duration,
    seed: u64,
    buf: Vec<u8>,
    /// Buffers of datagrams already delivered, for the next ones ([`Sim::datagram`]).
    spare: Vec<Vec<u8>>,
    /// Each client's next wakeup (the earliest of its endpoint and its two links), as last
    /// computed, and the same ordered by time: the network visits only clients that are due
    /// or were handed something, so a step costs what moves, not the number of clients.
    wake_of: Vec<Option<Instant>>,
    wakes: BTreeSet<(Instant, usize)>,
    by_addr: HashMap<SocketAddr, usize>,
    /// Clients to visit in the next round whatever their wakeup (a datagram arrived, or the
    /// caller changed them).
    active: Vec<usize>,
    /// The clients the caller said it changed since the last run ([`Sim::touched`]); `None`:
    /// it did not say, so any may have changed.
    touched: Option<Vec<usize>>,
}

/// Delivered datagrams' buffers kept for the next ones: enough for every datagram in
/// flight on a thousand clients' links, and a bound on what is kept when fewer are.
const MAX_SPARE_BUFFERS: usize = 8_192;

/// `bytes` in a spare buffer, or in a new one when none is left.
fn recycled(spare: &mut Vec<Vec<u8>>, bytes: &[u8]) -> Vec<u8> {
    let mut v = spare.pop().unwrap_or_default();
    v.clear();
    v.extend_from_slice(bytes);
    v
}

/// Keep a delivered datagram's buffer for a later one.
fn give_back(spare: &mut Vec<Vec<u8>>, buffer: Vec<u8>) {
    if spare.len() < MAX_SPARE_BUFFERS {
        spare.push(buffer);
    }
}

impl Sim {
    /// A network whose server runs `config`; `seed` drives every random choice.
    ///
    /// # Panics
    /// On a config [`Server::new`] refuses: a harness set up wrong is a bug in the test.
    pub fn new(config: ServerConfig, seed: u64) -> Self {
        Self::with_server(
            |now| match Server::new(config, now, seed) {
                Ok(s) => s,
                Err(e) => panic!("invalid server config for the simulation: {e}"),
            },
            seed,
        )
    }

    /// Add a client that starts connecting now; returns its index.
    ///
    /// # Panics
    /// On a config [`Client::new`] refuses, as [`Sim::new`].
    pub fn add_client(&mut self, config: ClientConfig) -> usize {
        self.add_client_with(
            |server, now, seed| match Client::new(config, server, now, seed) {
                Ok(c) => c,
                Err(e) => panic!("invalid client config for the simulation: {e}"),
            },
        )
    }

    /// The server-side id of client `i`, once connected.
    pub fn client_id(&self, i: usize) -> Option<ClientId> {
        match self.clients[i].client.state() {
            crate::connection::ClientState::Connected(id) => Some(id),
            _ => None,
        }
    }
}

impl<I: serde::Serialize> Sim<replication::Server, replication::Client<I>> {
    /// A network around a replication server; a config without a seed gets `seed`, so the
    /// run is reproducible.
    pub fn replication(
        mut config: replication::ServerConfig,
        seed: u64,
    ) -> Result<Self, replication::ConfigError> {
        config.seed.get_or_insert(seed);
        let now = Instant::now();
        let server = replication::Server::new(config, now)?;
        Ok(Self::with_server_at(server, now, seed))
    }

    /// Add a replication client that starts connecting now; returns its index.
    pub fn add_replication_client(
        &mut self,
        mut config: replication::ClientConfig,
    ) -> Result<usize, replication::ConfigError> {
        let seed = self.client_seed(self.clients.len());
        config.seed.get_or_insert(seed);
        let client = replication::Client::new(config, self.server_addr, self.now)?;
        Ok(self.push_client(client))
    }
}

impl<S: Endpoint, C: Endpoint> Sim<S, C> {
    /// A network around the server `make` builds at the start of virtual time.
    pub fn with_server(make: impl FnOnce(Instant) -> S, seed: u64) -> Self {
        // The one clock read for virtual time: its base. The network and both endpoints see
        // only virtual time; the clock is read again only to measure the server's work.
        let now = Instant::now();
        Self::with_server_at(make(now), now, seed)
    }

    fn with_server_at(server: S, now: Instant, seed: u64) -> Self {
        Self {
            now,
            server,
            server_addr: SERVER_ADDR,
            server_events: Vec::new(),
            clients: Vec::new(),
            stray: Vec::new(),
            server_busy: Duration::ZERO,
            seed,
            buf: vec![0; MAX_PACKET_BYTES],
            spare: Vec::new(),
            wake_of: Vec::new(),
            wakes: BTreeSet::new(),
            by_addr: HashMap::new(),
            active: Vec::new(),
            touched: None,
        }
    }

    fn client_seed(&self, i: usize) -> u64 {
        self.seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    /// Add the client `make` builds from the server's address, the virtual now and a seed
    /// of its own; returns its index.
    pub fn add_client_with(&mut self, make: impl FnOnce(SocketAddr, Instant, u64) -> C) -> usize {
        let seed = self.client_seed(self.clients.len());
        let client = make(self.server_addr, self.now, seed);
        self.push_client(client)
    }

    fn push_client(&mut self, client: C) -> usize {
        let i = self.clients.len();
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 20_000 + i as u16);
        let seed = self.client_seed(i);
        self.clients.push(SimClient {
            client,
            addr,
            events: Vec::new(),
            // The off config always validates.
            up: Conditioner::new(ConditionerConfig::off(), seed ^ 1).expect("off is valid"),
            down: Conditioner::new(ConditionerConfig::off(), seed ^ 2).expect("off is valid"),
            partitioned: false,
        });
        self.by_addr.insert(addr, i);
        self.wake_of.push(None);
        self.refresh(i);
        i
    }

    /// Tell the network that, since it last ran, the caller changed client `i` (its
    /// endpoint, its links, its events) and, unless it names them too, no other client.
    ///
    /// Optional: without it every run first looks at every client, which costs O(clients)
    /// per call. A caller that drives many clients one at a time (a frame of client 7, then
    /// a run up to the next frame) names the one it changed so each run costs what moves.
    /// Naming some but changing others is a harness bug; debug builds check for it.
    pub fn touched(&mut self, i: usize) {
        if i < self.clients.len() {
            self.touched.get_or_insert_with(Vec::new).push(i);
        }
    }

    /// Client `i`'s next wakeup: the earliest of its endpoint's and its two links'.
    fn wakeup(&self, i: usize) -> Option<Instant> {
        let c = &self.clients[i];
        [
            c.client.poll_timeout(),
            c.up.poll_timeout(),
            c.down.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Recompute client `i`'s wakeup in the index.
    fn refresh(&mut self, i: usize) {
        let t = self.wakeup(i);
        let old = std::mem::replace(&mut self.wake_of[i], t);
        if old != t {
            if let Some(o) = old {
                self.wakes.remove(&(o, i));
            }
            if let Some(t) = t {
                self.wakes.insert((t, i));
            }
        }
    }

    /// Take in what the caller changed since the last run: the clients it named, or all.
    fn take_touched(&mut self) {
        match self.touched.take() {
            Some(named) => {
                #[cfg(debug_assertions)]
                for (i, &w) in self.wake_of.iter().enumerate() {
                    assert!(
                        named.contains(&i) || self.wakeup(i) == w,
                        "Sim: client {i} changed but was not named in Sim::touched"
                    );
                }
                for i in named {
                    self.refresh(i);
                    self.active.push(i);
                }
            }
            None => {
                for i in 0..self.clients.len() {
                    self.refresh(i);
                    self.active.push(i);
                }
            }
        }
    }

    /// The index of the client at `addr`, if it is one of the simulated ones.
    pub fn client_at(&self, addr: SocketAddr) -> Option<usize> {
        match self.by_addr.get(&addr) {
            Some(&i) if self.clients.get(i).is_some_and(|c| c.addr == addr) => Some(i),
            // The caller moved a client: look for it the slow way.
            _ => self.clients.iter().position(|c| c.addr == addr),
        }
    }

    /// Condition both directions of client `i`'s link.
    ///
    /// # Panics
    /// On a config that fails [`ConditionerConfig::validate`]: a harness set up wrong is a
    /// bug in the test, not a situation to carry on from.
    pub fn set_link(&mut self, i: usize, up: ConditionerConfig, down: ConditionerConfig) {
        let c = &mut self.clients[i];
        if let Err(e) = c.up.set_config(up).and_then(|()| c.down.set_config(down)) {
            panic!("invalid conditioner config for the simulation: {e}");
        }
        if let Some(named) = &mut self.touched {
            named.push(i);
        }
    }

    /// Condition every client's link, both directions alike.
    ///
    /// # Panics
    /// On an invalid config, as [`set_link`](Self::set_link).
    pub fn set_all_links(&mut self, config: ConditionerConfig) {
        for i in 0..self.clients.len() {
            self.set_link(i, config.clone(), config.clone());
        }
    }

    /// Deliver a raw datagram to the server as if from `from` (for bad-input tests).
    pub fn inject_to_server(&mut self, from: SocketAddr, datagram: &[u8]) {
        let started = Instant::now();
        self.server.handle_datagram(self.now, from, datagram);
        self.server_busy += started.elapsed();
        self.pump();
    }

    /// Real (not virtual) time spent so far in the server's calls the network made: every
    /// datagram received, its timers, its transmits between the caller's own calls (each
    /// copied into its link, as a real server copies it into its socket), its events, and
    /// each ask for its next timeout. Everything a server does that the caller does not
    /// call itself (a game's tick): a bench adds it to the tick's cost to show a whole
    /// core's work. A measurement only; nothing in the network reads it.
    pub fn server_busy(&self) -> Duration {
        self.server_busy
    }

    /// Complete a handshake by hand from `from` (an address that is not a simulated client),
    /// as a hand-written peer would; returns the session salt, or `None` when the server did
    /// not answer with a challenge and then an acceptance. For tests that speak raw packets.
    pub fn handshake_by_hand(&mut self, from: SocketAddr, client_nonce: u64) -> Option<u32> {
        let response = self.request_by_hand(from, client_nonce)?;
        self.respond_by_hand(from, response)
    }

    /// The first half of [`Self::handshake_by_hand`]: send a connection request from `from`
    /// and return the challenge response the server's challenge asks for, to send with
    /// [`Self::respond_by_hand`] (a test may act in between).
    pub fn request_by_hand(
        &mut self,
        from: SocketAddr,
        client_nonce: u64,
    ) -> Option<Packet<'static>> {
        let reply = self.exchange(from, &Packet::ConnectionRequest { client_nonce })?;
        let Ok(Packet::Challenge {
            client_nonce,
            timestamp_ms,
            mac,
        }) = Packet::decode(&reply)
        else {
            return None;
        };
        Some(Packet::ChallengeResponse {
            client_nonce,
            timestamp_ms,
            mac,
        })
    }

    /// The second half of [`Self::handshake_by_hand`]: send `response` from `from`; the
    /// session salt of the server's acceptance, if it accepted.
    pub fn respond_by_hand(&mut self, from: SocketAddr, response: Packet<'_>) -> Option<u32> {
        let reply = self.exchange(from, &response)?;
        match Packet::decode(&reply) {
            Ok(Packet::Accepted { salt, .. }) => Some(salt),
            _ => None,
        }
    }

    /// Inject `packet` from `from`; returns the server's first answer to that address.
    fn exchange(&mut self, from: SocketAddr, packet: &Packet<'_>) -> Option<Vec<u8>> {
        let len = packet.encode(&mut self.buf)?;
        let datagram = self.buf[..len].to_vec();
        self.stray.retain(|(to, _)| *to != from);
        self.inject_to_server(from, &datagram);
        let i = self.stray.iter().position(|(to, _)| *to == from)?;
        Some(self.stray.remove(i).1)
    }

    /// A copy of `bytes` to push on a link, in the buffer of a datagram already delivered
    /// when there is one: as a server's send is a copy into the kernel's buffers, not an
    /// allocation. A harness that flushes the server itself (and times it) takes its copies
    /// here; one allocation per datagram now and then took the allocator's fresh memory, and
    /// a tick of a thousand clients that did so cost half as much again (docs/BENCHMARKS.md).
    pub fn datagram(&mut self, bytes: &[u8]) -> Vec<u8> {
        recycled(&mut self.spare, bytes)
    }

    /// Run the network until virtual time `end`.
    pub fn run_until(&mut self, end: Instant) {
        self.take_touched();
        loop {
            self.pump_now();
            let started = Instant::now();
            let server = self.server.poll_timeout();
            self.server_busy += started.elapsed();
            let next = self.next_wakeup(server);
            match next {
                Some(t) if t <= end => {
                    self.now = t.max(self.now + MIN_STEP).min(end.max(self.now));
                    if self.now >= end {
                        self.now = end;
                        self.pump_now();
                        return;
                    }
                }
                _ => {
                    self.now = end.max(self.now);
                    self.pump_now();
                    return;
                }
            }
        }
    }

    /// Run the network for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until(end);
    }

    /// Run until `done(self)` holds or `limit` of virtual time passes; true if it held.
    pub fn run_until_cond(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if done(self) {
                return true;
            }
            let step = (self.now + Duration::from_millis(1)).min(end);
            self.run_until(step);
        }
        done(self)
    }

    /// The earliest of the server's next timeout (`server`) and every client's wakeup.
    fn next_wakeup(&self, server: Option<Instant>) -> Option<Instant> {
        let clients = self.wakes.first().map(|&(t, _)| t);
        [server, clients].into_iter().flatten().min()
    }

    /// Process everything due at `now` until nothing moves.
    ///
    /// # Panics
    /// When datagrams still move after [`MAX_PUMP_ROUNDS`] rounds at the same instant: the
    /// endpoints answer each other without time passing (a livelock), a bug the test must see
    /// rather than a network that quietly stops.
    pub fn pump(&mut self) {
        self.take_touched();
        self.pump_now();
    }

    fn pump_now(&mut self) {
        let now = self.now;
        settle(|| self.pump_round(now));
    }

    /// One round of [`pump`](Self::pump); true if any datagram moved.
    fn pump_round(&mut self, now: Instant) -> bool {
        let mut moved = false;
        let started = Instant::now();
        if self.server.poll_timeout().is_some_and(|t| t <= now) {
            self.server.handle_timeout(now);
        }
        while let Some(t) = self.server.poll_transmit(now, &mut self.buf) {
            moved = true;
            let bytes = recycled(&mut self.spare, &self.buf[..t.len]);
            match self.client_at(t.destination) {
                Some(i) => {
                    let c = &mut self.clients[i];
                    if !c.partitioned {
                        c.down.push(now, bytes, t.len);
                        self.active.push(i);
                    }
                }
                None => self.stray.push((t.destination, bytes)),
            }
        }
        while let Some(e) = self.server.poll_event() {
            self.server_events.push(e);
        }
        self.server_busy += started.elapsed();
        // The clients with anything to do: due now, or handed something. In index order, as
        // a round over every client would visit them.
        let mut visit = std::mem::take(&mut self.active);
        visit.extend(self.wakes.range(..=(now, usize::MAX)).map(|&(_, i)| i));
        visit.sort_unstable();
        visit.dedup();
        for &i in &visit {
            let c = &mut self.clients[i];
            if c.client.poll_timeout().is_some_and(|t| t <= now) {
                c.client.handle_timeout(now);
            }
            while let Some(t) = c.client.poll_transmit(now, &mut self.buf) {
                moved = true;
                if !c.partitioned {
                    c.up.push(now, recycled(&mut self.spare, &self.buf[..t.len]), t.len);
                }
            }
            while let Some(d) = c.down.poll(now) {
                moved = true;
                if !c.partitioned {
                    c.client.handle_datagram(now, self.server_addr, &d);
                }
                give_back(&mut self.spare, d);
            }
            while let Some(e) = c.client.poll_event() {
                c.events.push(e);
            }
        }
        for &i in &visit {
            let c = &mut self.clients[i];
            while let Some(d) = c.up.poll(now) {
                moved = true;
                if !c.partitioned {
                    let started = Instant::now();
                    self.server.handle_datagram(now, c.addr, &d);
                    self.server_busy += started.elapsed();
                }
                give_back(&mut self.spare, d);
            }
        }
        let started = Instant::now();
        while let Some(e) = self.server.poll_event() {
            self.server_events.push(e);
        }
        self.server_busy += started.elapsed();
        for &i in &visit {
            self.refresh(i);
        }
        // Keep the allocation for the next round.
        visit.clear();
        if self.active.is_empty() {
            self.active = visit;
        }
        moved
    }
}

/// Run `round` until it reports that nothing moved.
///
/// # Panics
/// After [`MAX_PUMP_ROUNDS`] rounds that all moved.
fn settle(mut round: impl FnMut() -> bool) {
    for _ in 0..MAX_PUMP_ROUNDS {
        if !round() {
            return;
        }
    }
    panic!(
        "Sim::pump: datagrams still moving after {MAX_PUMP_ROUNDS} rounds at one instant (livelock)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settle_stops_at_the_first_quiet_round() {
        let mut rounds = 0;
        settle(|| {
            rounds += 1;
            rounds < 3
        });
        assert_eq!(rounds, 3);
    }

    #[test]
    #[should_panic(expected = "livelock")]
    fn a_livelock_fails_instead_of_stopping_quietly() {
        settle(|| true);
    }

    /// Two clients that connect, then play for a while with both links delayed.
    fn two_connected() -> Sim {
        let mut sim = Sim::new(ServerConfig::default(), 3);
        for _ in 0..2 {
            sim.add_client(ClientConfig::default());
        }
        assert!(sim.run_until_cond(Duration::from_secs(2), |s| {
            s.clients.iter().all(|c| c.client.is_connected())
        }));
        sim
    }

    #[test]
    fn delivered_buffers_carry_the_next_datagrams_and_only_so_many_are_kept() {
        let mut sim = two_connected();
        // The handshake delivered datagrams both ways: their buffers are kept.
        assert!(!sim.spare.is_empty());
        let long = [7u8; 900];
        let first = sim.datagram(&long);
        assert_eq!(first, long);
        give_back(&mut sim.spare, first);
        // A shorter datagram in the longer one's buffer holds its own bytes only.
        assert_eq!(sim.datagram(b"ack"), b"ack");
        for _ in 0..MAX_SPARE_BUFFERS + 10 {
            give_back(&mut sim.spare, vec![0; 8]);
        }
        assert_eq!(sim.spare.len(), MAX_SPARE_BUFFERS);
    }

    #[test]
    fn the_server_s_work_is_counted_when_the_network_calls_it() {
        let mut sim = Sim::new(ServerConfig::default(), 3);
        assert_eq!(sim.server_busy(), Duration::ZERO, "nothing ran yet");
        let before = sim.server_busy();
        sim.add_client(ClientConfig::default());
        // The handshake: the server takes in the client's packets and answers them.
        assert!(sim.run_until_cond(Duration::from_secs(2), |s| {
            s.clients[0].client.is_connected()
        }));
        assert!(sim.server_busy() > before);
    }

    #[test]
    fn a_named_change_is_taken_in_and_the_run_goes_on() {
        let mut sim = two_connected();
        sim.clients[1]
            .client
            .send_message(sim.now, 0, b"hello")
            .unwrap();
        sim.touched(1);
        // The links have no delay: taken in, the message goes at once, not at the client's
        // next timer (its keep-alive, far later).
        sim.run_for(Duration::from_millis(1));
        let got = sim.server_events.iter().any(|(_, e)| {
            matches!(e, crate::connection::Event::Message { payload, .. } if payload == b"hello")
        });
        assert!(got, "the named client's message arrived");
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "not named")]
    fn changing_a_client_without_naming_it_is_caught_when_others_are_named() {
        let mut sim = two_connected();
        // Client 0 gets a message to send, but only client 1 is named.
        sim.clients[0]
            .client
            .send_message(sim.now, 0, b"hello")
            .unwrap();
        sim.touched(1);
        sim.run_for(Duration::from_millis(10));
    }
}
