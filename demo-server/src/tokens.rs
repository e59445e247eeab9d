//! Secure mode's backend, in the small: the server's private key on disk, and an HTTP
//! endpoint that hands out connect tokens.
//!
//! The split is the one a real game ships: a web backend (HTTP, request and response, where
//! a player would log in) gives the client a short-lived token, and the game itself runs on
//! UDP with every packet encrypted under keys from that token. Here the backend is a route
//! on the game server's own process; it authenticates nobody, which is what a demo can do.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use snapsync::connection::{SecureServerConfig, Security};
use snapsync::netcode::{self, Key, TokenSettings, generate_connect_token};

/// The demo's netcode protocol id ("snapsync" in ASCII): tokens and packets of another game
/// are refused.
pub const DEMO_PROTOCOL_ID: u64 = u64::from_be_bytes(*b"snapsync");
/// How long a token can be used to connect, in seconds.
pub const TOKEN_EXPIRE_SECS: u64 = 300;
/// Seconds of silence after which a secure connection ends (the token carries it).
pub const TOKEN_TIMEOUT_SECS: i32 = 5;

/// Why the key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading or writing it failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// It holds something other than 32 bytes.
    #[error("key file {path} must hold exactly 32 bytes (it holds {len})")]
    Length {
        /// The file.
        path: String,
        /// What it holds.
        len: usize,
    },
}

/// The server's private key from `path`, or a new random one written there (readable by the
/// owner only) when the file does not exist yet.
pub fn load_or_create_key(path: &Path) -> Result<Key, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read(path) {
        Ok(bytes) => bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyFileError::Length {
                path: path.display().to_string(),
                len: bytes.len(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = netcode::generate_key();
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            use std::io::Write;
            options
                .open(path)
                .and_then(|mut f| f.write_all(&key))
                .map_err(io)?;
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

/// Mints tokens for one game server.
#[derive(Debug)]
pub struct TokenMint {
    key: Key,
    server: SocketAddr,
    next_client_id: AtomicU64,
}

impl TokenMint {
    /// Tokens for the server clients reach at `server`, sealed with `key`.
    pub fn new(key: Key, server: SocketAddr) -> Self {
        Self {
            key,
            server,
            next_client_id: AtomicU64::new(1),
        }
    }

    /// A fresh token (2048 bytes) for the next client id.
    pub fn mint(&self) -> Result<Vec<u8>, netcode::TokenError> {
        let settings = TokenSettings {
            protocol_id: DEMO_PROTOCOL_ID,
            client_id: self.next_client_id.fetch_add(1, Ordering::Relaxed),
            server_addresses: vec![self.server],
            expire_seconds: TOKEN_EXPIRE_SECS,
            timeout_seconds: TOKEN_TIMEOUT_SECS,
            user_data: [0; netcode::USER_DATA_BYTES],
        };
        let token = generate_connect_token(unix_secs_now(), &settings, &self.key)?;
        Ok(token.to_bytes().to_vec())
    }
}

/// Secure mode as the demo runs it: netcode 1.02 with the demo's protocol id, for clients
/// that reach the server at `public` with tokens sealed with `key`, its clock starting now.
pub fn secure_mode(key: Key, public: SocketAddr) -> Security {
    Security::Secure(SecureServerConfig {
        netcode: netcode::ServerConfig::new(DEMO_PROTOCOL_ID, key, public),
        unix_secs_at_start: unix_secs_now(),
    })
}

/// Unix time in seconds, from the wall clock.
pub fn unix_secs_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The token endpoint's routes: `POST /connect` answers with a token
/// (`application/octet-stream`, 2048 bytes); anything else is 404 or 405.
pub fn router(mint: Arc<TokenMint>) -> Router {
    Router::new()
        .route("/connect", post(connect))
        .with_state(mint)
}

async fn connect(State(mint): State<Arc<TokenMint>>) -> impl IntoResponse {
    match mint.mint() {
        Ok(token) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            token,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Serve the token endpoint on `listener` until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, mint: Arc<TokenMint>) -> std::io::Result<()> {
    axum::serve(listener, router(mint)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_created_once_and_read_back_and_a_wrong_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("snapsync-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("server.key");
        let _ = std::fs::remove_file(&path);
        let first = load_or_create_key(&path).unwrap();
        assert_eq!(load_or_create_key(&path).unwrap(), first);
        std::fs::write(&path, b"short").unwrap();
        let err = load_or_create_key(&path).unwrap_err();
        assert!(err.to_string().contains("exactly 32 bytes"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn minted_tokens_name_the_server_and_open_with_its_key() {
        let key = netcode::generate_key();
        let server: SocketAddr = "127.0.0.1:7777".parse().unwrap();
        let mint = TokenMint::new(key, server);
        let a = netcode::ConnectToken::from_bytes(&mint.mint().unwrap()).unwrap();
        let b = netcode::ConnectToken::from_bytes(&mint.mint().unwrap()).unwrap();
        assert_eq!(a.server_addresses, vec![server]);
        assert_eq!(a.protocol_id, DEMO_PROTOCOL_ID);
        let (pa, pb) = (a.open_private(&key).unwrap(), b.open_private(&key).unwrap());
        assert_ne!(pa.client_id, pb.client_id, "one id per token");
        assert!(a.open_private(&[0; 32]).is_err());
    }
}
