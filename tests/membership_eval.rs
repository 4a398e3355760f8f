//! Our SWIM and foca in the membership evaluation's simulation
//! (`deorch bench membership`): both detect a killed member within their
//! configured bound, and neither declares a live member down when no
//! datagram is lost. Virtual time: deterministic and fast.

use deorch::gossip::membership_eval::{run, Scenario, Side, Timings};

/// Detection bound: a first failed probe within 5 periods (at 20 members
/// a given one goes unprobed for a period with chance (18/19)^19 ≈ 0.36,
/// so for 5 with 0.6 %), its ack timeout, the suspicion timeout, then 3
/// periods to spread the death to the 18 others.
fn bound_ms(t: &Timings) -> u64 {
    8 * t.probe_ms + t.ack_ms + t.suspect_ms
}

#[test]
fn both_detect_a_kill_within_bounds_and_no_false_positive_without_loss() {
    let t = Timings::default();
    for side in [Side::Ours, Side::Foca] {
        for seed in 1..=5 {
            let o = run(side, Scenario::Kill(1), 20, seed, &t);
            assert_eq!(o.missed, 0, "{side:?} seed {seed}: kill not detected");
            let ms = o.times_ms[0];
            assert!(
                ms >= t.suspect_ms && ms <= bound_ms(&t),
                "{side:?} seed {seed}: every survivor saw the kill after {ms} ms, outside [{}, {}]",
                t.suspect_ms,
                bound_ms(&t)
            );
            assert_eq!(o.fp_pairs, 0, "{side:?} seed {seed}: false positive");
        }
        let o = run(side, Scenario::Loss(0.0, 120), 20, 7, &t);
        assert_eq!(
            (o.fp_members, o.fp_pairs),
            (0, 0),
            "{side:?}: live members declared down with no loss"
        );
    }
}

#[test]
fn same_seed_same_outcome() {
    let t = Timings::default();
    for side in [Side::Ours, Side::Foca] {
        let a = run(side, Scenario::Kill(2), 20, 11, &t);
        let b = run(side, Scenario::Kill(2), 20, 11, &t);
        assert_eq!(a.times_ms, b.times_ms, "{side:?}");
        assert_eq!(a.bytes_per_s, b.bytes_per_s, "{side:?}");
    }
}
