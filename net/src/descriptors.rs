//! The open-descriptor limit.

use std::fmt;

/// Descriptors a server keeps free of connections for everything else it opens (the
/// sealed model, the memfd, outgoing connections to a key broker, logs).
pub const RESERVED_DESCRIPTORS: u64 = 64;

/// What [`raise_descriptor_limit`] did, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DescriptorLimit {
    /// The soft limit was already the hard limit (`None`: unlimited).
    Already(Option<u64>),
    /// Raised from the soft limit to the hard limit.
    Raised {
        /// The soft limit before.
        from: Option<u64>,
        /// The hard limit, now also the soft one.
        to: Option<u64>,
    },
    /// Raising it failed; the soft limit stays.
    Kept {
        /// The soft limit, still in force.
        soft: Option<u64>,
        /// The hard limit it could not be raised to.
        hard: Option<u64>,
        /// Why.
        error: String,
    },
}

impl DescriptorLimit {
    /// The soft limit now in force (`None`: unlimited).
    pub fn in_force(&self) -> Option<u64> {
        match self {
            DescriptorLimit::Already(n) | DescriptorLimit::Kept { soft: n, .. } => *n,
            DescriptorLimit::Raised { to, .. } => *to,
        }
    }
}

fn show(v: Option<u64>) -> String {
    v.map_or_else(|| "unlimited".to_owned(), |n| n.to_string())
}

impl fmt::Display for DescriptorLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DescriptorLimit::Already(n) => {
                write!(
                    f,
                    "open-descriptor limit {} (already the hard limit)",
                    show(*n)
                )
            }
            DescriptorLimit::Raised { from, to } => write!(
                f,
                "open-descriptor limit raised from {} to the hard limit {}",
                show(*from),
                show(*to)
            ),
            DescriptorLimit::Kept { soft, hard, error } => write!(
                f,
                "open-descriptor limit stays {} (raising it to {} failed: {error})",
                show(*soft),
                show(*hard)
            ),
        }
    }
}

/// Raises the soft limit on open descriptors (`RLIMIT_NOFILE`) to the hard limit, so that
/// a burst of connections meets the limit the administrator set, not the lower default.
pub fn raise_descriptor_limit() -> DescriptorLimit {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let before = getrlimit(Resource::Nofile);
    if before.current == before.maximum {
        return DescriptorLimit::Already(before.current);
    }
    let raised = Rlimit {
        current: before.maximum,
        maximum: before.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => DescriptorLimit::Raised {
            from: before.current,
            to: before.maximum,
        },
        Err(e) => DescriptorLimit::Kept {
            soft: before.current,
            hard: before.maximum,
            error: e.to_string(),
        },
    }
}

/// The total connection cap under the soft descriptor limit `descriptors` (`None`:
/// unlimited): `max_connections`, lowered so that `reserved` descriptors stay free for
/// everything else and each connection has the `per_connection` descriptors it uses (2
/// for a proxy: the client's and the upstream's); at least 1.
pub fn effective_total_cap(
    max_connections: usize,
    descriptors: Option<u64>,
    reserved: u64,
    per_connection: u64,
) -> usize {
    match descriptors {
        None => max_connections,
        Some(limit) => {
            let room = (limit.saturating_sub(reserved) / per_connection.max(1)).max(1);
            max_connections.min(usize::try_from(room).unwrap_or(usize::MAX))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_cap_leaves_descriptors_free() {
        let r = RESERVED_DESCRIPTORS;
        assert_eq!(effective_total_cap(512, None, r, 1), 512);
        assert_eq!(effective_total_cap(512, Some(1 << 20), r, 1), 512);
        assert_eq!(effective_total_cap(512, Some(256), r, 1), 192);
        assert_eq!(effective_total_cap(512, Some(10), r, 1), 1);
        // A proxy: two descriptors a connection.
        assert_eq!(effective_total_cap(256, Some(272), 16, 2), 128);
    }

    #[test]
    fn the_limit_in_force_and_its_log_line() {
        let raised = DescriptorLimit::Raised {
            from: Some(1024),
            to: Some(4096),
        };
        assert_eq!(raised.in_force(), Some(4096));
        assert_eq!(
            raised.to_string(),
            "open-descriptor limit raised from 1024 to the hard limit 4096"
        );
        let kept = DescriptorLimit::Kept {
            soft: Some(64),
            hard: None,
            error: "Operation not permitted".into(),
        };
        assert_eq!(kept.in_force(), Some(64));
        assert!(kept.to_string().contains("raising it to unlimited failed"));
        // Whatever this process has, raising twice settles on the hard limit.
        let first = raise_descriptor_limit();
        assert!(
            matches!(raise_descriptor_limit(), DescriptorLimit::Already(n) if n == first.in_force())
        );
    }
}
