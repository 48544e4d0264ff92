//! The process's open-file limit, raised at start to what the media port range needs: every
//! relay port is a socket, and the usual soft limit of 1,024 would fail calls past ~250.

/// Raise the soft RLIMIT_NOFILE toward the hard limit (never lower it): to `needed`, at
/// least 65,536, at most the hard limit (some containers set it near 2^30, which nothing
/// here needs). Warn when even the hard limit is below `needed` descriptors. Returns the
/// soft limit now in force.
pub fn raise_to_fit(needed: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct, which we own, and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read the open-file limit");
        return 0;
    }
    let target = limit.rlim_max.min(needed.max(65_536));
    if limit.rlim_cur < target {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit struct we own; raising the soft limit up to
        // the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = target;
        } else {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot raise the open-file limit");
        }
    }
    if limit.rlim_cur < needed {
        tracing::warn!(
            limit = limit.rlim_cur,
            needed,
            "the open-file limit is below what media.port_min..port_max needs: calls will fail \
             once it is reached (raise LimitNOFILE= in the systemd unit, or ulimit -n)"
        );
    }
    limit.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_rises_toward_the_hard_limit() {
        let soft = raise_to_fit(0);
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(soft, limit.rlim_cur);
        assert!(limit.rlim_cur >= limit.rlim_max.min(65_536));
    }
}
