//! Stateless handshake cookies: a keyed hash over the client's address, its nonce and a
//! timestamp, so the server keeps nothing for an address until it echoes a valid cookie.

use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use siphasher::sip::SipHasher24;

/// Makes and checks challenge cookies with a server-secret key.
#[derive(Debug, Clone)]
pub(crate) struct CookieJar {
    key: [u8; 16],
    lifetime: Duration,
}

impl CookieJar {
    pub(crate) fn new(key: [u8; 16], lifetime: Duration) -> Self {
        Self { key, lifetime }
    }

    pub(crate) fn mac(&self, addr: SocketAddr, client_nonce: u64, timestamp_ms: u64) -> u64 {
        let mut h = SipHasher24::new_with_key(&self.key);
        match addr.ip() {
            IpAddr::V4(ip) => h.write(&ip.octets()),
            IpAddr::V6(ip) => h.write(&ip.octets()),
        }
        h.write_u16(addr.port());
        h.write_u64(client_nonce);
        h.write_u64(timestamp_ms);
        h.finish()
    }

    /// True when `mac` was made by this jar for this address and nonce, not in the future
    /// and not older than the lifetime, as seen at server time `now_ms`.
    pub(crate) fn verify(
        &self,
        addr: SocketAddr,
        client_nonce: u64,
        timestamp_ms: u64,
        mac: u64,
        now_ms: u64,
    ) -> CookieCheck {
        if self.mac(addr, client_nonce, timestamp_ms) != mac {
            return CookieCheck::Forged;
        }
        if timestamp_ms > now_ms || now_ms - timestamp_ms > self.lifetime.as_millis() as u64 {
            return CookieCheck::Expired;
        }
        CookieCheck::Valid
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CookieCheck {
    Valid,
    Forged,
    Expired,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_is_bound_to_address_nonce_and_time() {
        let jar = CookieJar::new([7; 16], Duration::from_secs(10));
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        let mac = jar.mac(a, 1, 1000);
        assert_eq!(jar.verify(a, 1, 1000, mac, 1500), CookieCheck::Valid);
        assert_eq!(jar.verify(b, 1, 1000, mac, 1500), CookieCheck::Forged);
        assert_eq!(jar.verify(a, 2, 1000, mac, 1500), CookieCheck::Forged);
        assert_eq!(jar.verify(a, 1, 1001, mac, 1500), CookieCheck::Forged);
        assert_eq!(jar.verify(a, 1, 1000, mac, 11_001), CookieCheck::Expired);
        assert_eq!(jar.verify(a, 1, 1000, mac, 999), CookieCheck::Expired);
        let other = CookieJar::new([8; 16], Duration::from_secs(10));
        assert_eq!(other.verify(a, 1, 1000, mac, 1500), CookieCheck::Forged);
    }
}
