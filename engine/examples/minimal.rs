//! A first game on snapsync: a server and one client in one program, on loopback.
//!
//! The server moves 100 entities in circles at 30 Hz and gives the client an avatar; the
//! client walks it with inputs, predicted at once on its side, draws the interpolated world,
//! prints entity 0 once a second, and leaves after four seconds. One chat message travels on
//! a reliable channel. Run it with `cargo run --release -p snapsync --example minimal`.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use snapsync::glam::Vec3;
use snapsync::net::{ReplicationClient, ReplicationServer};
use snapsync::replication::{ClientConfig, ClientEvent, ServerConfig, ServerEvent};
use snapsync::snapshot::{EntityId, EntityState, QuantizeConfig, Transform, World};

/// 30 ticks a second.
const TICK: Duration = Duration::from_micros(33_333);
/// The default channel 0 is reliable and ordered: right for chat.
const CHAT: u8 = 0;
const PLAY_FOR: Duration = Duration::from_secs(4);

/// What a player asks for each tick: a direction to walk in.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Walk {
    x: f32,
    z: f32,
}

/// The one step function both sides run: the server for real, the client to predict.
fn step(avatar: &mut EntityState, input: &Walk, dt: f32) {
    avatar.transform.position += Vec3::new(input.x, 0.0, input.z).clamp_length_max(1.0) * 4.0 * dt;
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = ServerConfig {
        quantize: QuantizeConfig {
            tick_interval: TICK,
            ..QuantizeConfig::default()
        },
        ..ServerConfig::default()
    };
    let server = ReplicationServer::bind_replication("127.0.0.1:0".parse()?, config).await?;
    let addr = server.local_addr()?;
    let serving = tokio::spawn(serve(server));

    // Tick rate, quantization and the avatar come from the server's welcome.
    let mut client = ReplicationClient::<Walk>::join(addr, ClientConfig::default(), None).await?;
    client.endpoint_mut().set_step(step);
    let start = tokio::time::Instant::now();
    let mut frame = 0u32;
    let mut next_print = Duration::from_secs(1);
    while start.elapsed() < PLAY_FOR {
        frame += 1;
        client
            .drive_until(start + Duration::from_secs(1) / 60 * frame)
            .await?;
        while let Some(event) = client.poll_event() {
            match event {
                ClientEvent::Message { bytes, .. } => {
                    println!("chat: {}", String::from_utf8_lossy(&bytes))
                }
                ClientEvent::Disconnected { reason } => return Err(reason.to_string().into()),
                _ => {}
            }
        }
        let now = client.now();
        let game = client.endpoint_mut();
        for _ in 0..game.inputs_due(now) {
            game.send_input(now, Walk { x: 1.0, z: 0.5 })?;
        }
        let view = game.view(now);
        if start.elapsed() >= next_print {
            next_print += Duration::from_secs(1);
            let at = |id| {
                view.entities
                    .iter()
                    .find(|(e, _)| Some(*e) == id)
                    .map(|(_, t)| t.position)
            };
            println!(
                "t={:.1}s entity 0 at {:?}, my avatar at {:?}",
                start.elapsed().as_secs_f32(),
                at(Some(EntityId(0))),
                at(view.owned)
            );
        }
        client.flush();
    }
    client.close().await?;
    serving.await??;
    Ok(())
}

/// The server's loop: inputs in, simulate, one `tick` call replicates the world.
async fn serve(mut server: ReplicationServer) -> std::io::Result<()> {
    let mut world = World::new();
    for i in 0..100 {
        world.insert(EntityId(i), EntityState::new(Transform::default()));
    }
    let mut avatars = HashMap::new();
    let mut anyone_came = false;
    let start = tokio::time::Instant::now();
    for tick in 1u32.. {
        server.drive_until(start + TICK * tick).await?;
        let now = server.now();
        while let Some(event) = server.poll_event() {
            let game = server.endpoint_mut();
            match event {
                ServerEvent::ClientJoined { client } => {
                    let avatar = EntityId(1000 + client.0);
                    world.insert(avatar, EntityState::new(Transform::default()));
                    avatars.insert(client, avatar);
                    anyone_came = true;
                    game.set_owned_entity(client, Some(avatar));
                    let _ = game.send_message(now, client, CHAT, b"welcome to the minimal game");
                }
                ServerEvent::Input { client, bytes, .. } => {
                    let avatar = avatars.get(&client).and_then(|id| world.get_mut(*id));
                    if let (Ok(input), Some(avatar)) = (snapsync::codec::decode(&bytes), avatar) {
                        step(avatar, &input, TICK.as_secs_f32());
                    }
                }
                ServerEvent::ClientLeft { client, reason } => {
                    println!("server: {client} left ({reason})");
                    if let Some(avatar) = avatars.remove(&client) {
                        world.remove(avatar);
                    }
                }
                _ => {}
            }
        }
        let t = tick as f32 * TICK.as_secs_f32();
        for i in 0..100u32 {
            let (angle, radius) = (t + i as f32 * 0.1, 5.0 + i as f32 * 0.1);
            if let Some(e) = world.get_mut(EntityId(i)) {
                e.transform.position = Vec3::new(angle.cos(), 0.0, angle.sin()) * radius;
            }
        }
        server.endpoint_mut().tick(now, &world);
        server.flush();
        // Done once the player has come and gone (or nobody came within the play time).
        let alone = server.endpoint().client_count() == 0;
        if alone && (anyone_came || start.elapsed() > PLAY_FOR * 2) {
            break;
        }
    }
    server.shutdown().await
}
