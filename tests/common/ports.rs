//! Free ports for the servers tests and benches start. Its own file so the
//! benches use the same one (`#[path]`), not a copy.

/// A port nothing listens on, for a server a test starts (and that binds it
/// a moment later). From below the kernel's range for outgoing connections
/// (`ip_local_port_range`, 32768 and up by default): a port the kernel
/// hands out for port 0 comes from that range, and any outgoing connection
/// (a load generator's, a NATS client's) may take it before the server
/// binds it; CI saw jetway refuse to start with "Address already in use".
/// Each call looks past the last port given in this process, from a start
/// of its own, so concurrent tests and test binaries do not meet.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOWEST: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let outgoing_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    if outgoing_from > LOWEST + 1_000 {
        let span = outgoing_from - LOWEST;
        let start = std::process::id().wrapping_mul(7_919) % span;
        for _ in 0..span {
            let port = LOWEST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
            let port = u16::try_from(port).expect("below the outgoing range");
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
