//! The open-file limit, and how many connections fit in it.
//!
//! Every connection is a file descriptor. Many systems start services with a soft limit of
//! 1,024 and a far higher hard limit; ncps raises the soft limit to the hard one at start (as the
//! Go runtime does for the Go ncps), then keeps connections below what is left once storage,
//! database and upstream sockets are counted.

use tracing::warn;

/// Descriptors kept for everything but client connections: at least this many, or an eighth of
/// the limit when that is more.
const RESERVED_FOR_THE_REST: u64 = 256;
/// Connections never exceed this, however high the limit: each costs memory.
const MOST_CONNECTIONS: u64 = 16_384;
/// Connections allowed even under a tiny limit.
const FEWEST_CONNECTIONS: u64 = 64;

/// Raises the soft limit of open files to the hard limit; returns the limit now in force.
pub fn raise_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            warn!(error = %e, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}

/// Client connections allowed open at once under an open-file limit of `limit`.
pub fn max_connections(limit: u64) -> usize {
    let reserved = RESERVED_FOR_THE_REST.max(limit / 8);
    let allowed = limit
        .saturating_sub(reserved)
        .clamp(FEWEST_CONNECTIONS, MOST_CONNECTIONS);
    usize::try_from(allowed).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_leave_room_for_everything_else() {
        assert_eq!(max_connections(1024), 768);
        assert_eq!(max_connections(20_000), 16_384);
        assert_eq!(max_connections(4096), 3584);
        assert_eq!(max_connections(1 << 20), 16_384);
        assert_eq!(max_connections(100), 64);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let limit = raise_limit();
        let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        assert_eq!(soft, limit);
        if hard != rlimit::INFINITY {
            assert_eq!(soft, hard);
        }
    }
}
