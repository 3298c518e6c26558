//! Sans-IO workload generator of one queue: which I/O to issue next, and the
//! verify bookkeeping of what each block must hold.
//!
//! Phases (verify mode only uses the first and last):
//! 1. `Prefill`: read-only patterns with `--verify` first write every unit of
//!    the partition once, so the timed reads have something to check.
//! 2. `Main`: the timed run; only its I/Os count in the statistics.
//! 3. `Readback`: with `--verify`, every unit written during the run is read
//!    back and checked (nothing acknowledged may be lost).
//! 4. `Done`.
//!
//! Each phase change waits until no I/O is in flight, so e.g. the timed reads
//! never race the prefill writes.

use super::config::{Geometry, RwPattern};
use super::verify::{GenerationMap, GENERATION_NONE, GENERATION_UNKNOWN};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Prefill,
    Main,
    Readback,
    Done,
}

/// One I/O to issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoSpec {
    pub op: Op,
    /// Unit index within this queue's partition.
    pub unit: u64,
    pub slba: u64,
    /// Number of LBAs (1-based).
    pub nlb: u32,
    /// Writes: the generation to stamp. Reads: the generation to expect, or
    /// `GENERATION_NONE`/`GENERATION_UNKNOWN` when the content is not checked.
    pub generation: u32,
    pub phase: Phase,
}

impl IoSpec {
    /// Whether a read's data must be checked.
    pub fn must_check(&self) -> bool {
        self.op == Op::Read && self.generation != GENERATION_NONE && self.generation != GENERATION_UNKNOWN
    }
}

/// Small fast PRNG (xorshift64*): per-queue, never shared.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Avoid the all-zero state, which xorshift never leaves.
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform-enough value in `0..n` (n > 0; the modulo bias is < n / 2^64).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        self.next_u64() % n
    }
}

/// The generator of one queue over its partition `[part_first, part_first + part_units)` of units.
#[derive(Debug)]
pub struct Workload {
    geometry: Geometry,
    part_first: u64,
    part_units: u64,
    read_percent: u8,
    random: bool,
    rng: Rng,
    seq_next: u64,
    verify: Option<GenerationMap>,
    phase: Phase,
    /// Next unit for the prefill / readback sweeps.
    sweep_next: u64,
    stop_requested: bool,
    inflight: u32,
}

impl Workload {
    pub fn new(
        geometry: Geometry,
        partition: (u64, u64),
        rw: RwPattern,
        rwmixread: u8,
        verify: bool,
        seed: u64,
    ) -> Workload {
        let (part_first, part_units) = partition;
        assert!(part_units > 0, "empty partition");
        assert!(part_first + part_units <= geometry.units, "partition beyond the range");
        let read_percent = rw.read_percent(rwmixread);
        let verify_map = verify.then(|| GenerationMap::new(part_units as usize));
        let phase = if verify && read_percent == 100 { Phase::Prefill } else { Phase::Main };
        Workload {
            geometry,
            part_first,
            part_units,
            read_percent,
            random: rw.is_random(),
            rng: Rng::new(seed),
            seq_next: 0,
            verify: verify_map,
            phase,
            sweep_next: 0,
            stop_requested: false,
            inflight: 0,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }
    pub fn inflight(&self) -> u32 {
        self.inflight
    }
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// The timed run is over: issue nothing more for it and move on (readback
    /// or done) once in-flight I/Os complete. Also ends a prefill early.
    pub fn stop(&mut self) {
        self.stop_requested = true;
        self.advance_phase();
    }

    /// Stop everything now (connection lost): no readback.
    pub fn abort(&mut self) {
        self.phase = Phase::Done;
    }

    fn advance_phase(&mut self) {
        if self.inflight > 0 {
            return;
        }
        loop {
            let next = match self.phase {
                Phase::Prefill if self.stop_requested => Phase::Readback,
                Phase::Prefill if self.sweep_next >= self.part_units => Phase::Main,
                Phase::Main if self.stop_requested => Phase::Readback,
                Phase::Readback if self.verify.is_none() || self.sweep_next >= self.part_units => Phase::Done,
                _ => return,
            };
            if next == Phase::Readback || next == Phase::Main {
                self.sweep_next = 0;
            }
            self.phase = next;
        }
    }

    fn spec(&self, op: Op, unit: u64, generation: u32) -> IoSpec {
        let g = &self.geometry;
        let slba = g.first_lba + (self.part_first + unit) * g.unit_lbas;
        IoSpec { op, unit, slba, nlb: g.unit_lbas as u32, generation, phase: self.phase }
    }

    /// The next I/O to issue now, or `None` (phase drained, waiting for completions, or done).
    pub fn next_io(&mut self) -> Option<IoSpec> {
        self.advance_phase();
        let spec = match self.phase {
            Phase::Done => return None,
            Phase::Prefill => {
                if self.sweep_next >= self.part_units {
                    return None;
                }
                let unit = self.sweep_next;
                self.sweep_next += 1;
                let map = self.verify.as_ref().expect("prefill only in verify mode");
                self.spec(Op::Write, unit, map.next_generation(unit as usize))
            }
            Phase::Readback => {
                let map = self.verify.as_ref()?;
                while self.sweep_next < self.part_units {
                    let u = self.sweep_next as usize;
                    let generation = map.generation(u);
                    if generation != GENERATION_NONE && generation != GENERATION_UNKNOWN {
                        break;
                    }
                    self.sweep_next += 1;
                }
                if self.sweep_next >= self.part_units {
                    self.advance_phase();
                    return None;
                }
                let unit = self.sweep_next;
                self.sweep_next += 1;
                let generation = map.generation(unit as usize);
                self.spec(Op::Read, unit, generation)
            }
            Phase::Main => {
                if self.stop_requested {
                    return None;
                }
                let op = if self.read_percent == 100 {
                    Op::Read
                } else if self.read_percent == 0 || self.rng.below(100) >= self.read_percent as u64 {
                    Op::Write
                } else {
                    Op::Read
                };
                let mut unit = if self.random {
                    self.rng.below(self.part_units)
                } else {
                    let u = self.seq_next;
                    self.seq_next = (self.seq_next + 1) % self.part_units;
                    u
                };
                let generation = match &self.verify {
                    None => GENERATION_NONE,
                    Some(map) => {
                        unit = map.free_unit_from(unit as usize)? as u64;
                        if !self.random {
                            self.seq_next = (unit + 1) % self.part_units;
                        }
                        match op {
                            Op::Write => map.next_generation(unit as usize),
                            Op::Read => map.generation(unit as usize),
                        }
                    }
                };
                self.spec(op, unit, generation)
            }
        };
        if let Some(map) = self.verify.as_mut() {
            map.set_busy(spec.unit as usize, true);
        }
        self.inflight += 1;
        Some(spec)
    }

    /// An I/O from [`next_io`](Self::next_io) completed; `ok` = success status.
    pub fn complete(&mut self, spec: &IoSpec, ok: bool) {
        debug_assert!(self.inflight > 0, "completion without an I/O in flight");
        self.inflight -= 1;
        if let Some(map) = self.verify.as_mut() {
            if spec.op == Op::Write {
                map.write_done(spec.unit as usize, spec.generation, ok);
            }
            map.set_busy(spec.unit as usize, false);
        }
        self.advance_phase();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(units: u64) -> Geometry {
        Geometry { lba_bytes: 512, unit_lbas: 8, first_lba: 100, units }
    }

    #[test]
    fn sequential_read_wraps_and_maps_lbas() {
        let mut w = Workload::new(geo(10), (4, 3), RwPattern::Read, 50, false, 1);
        assert_eq!(w.phase(), Phase::Main);
        let lbas: Vec<u64> = (0..4).map(|_| w.next_io().unwrap().slba).collect();
        assert_eq!(lbas, vec![100 + 32, 100 + 40, 100 + 48, 100 + 32]);
        assert_eq!(w.inflight(), 4);
    }

    #[test]
    fn random_stays_in_partition_and_mix_is_respected() {
        let mut w = Workload::new(geo(1000), (100, 50), RwPattern::RandRw, 70, false, 7);
        let mut reads = 0;
        for _ in 0..10_000 {
            let s = w.next_io().unwrap();
            assert!(s.unit < 50);
            assert!((100 + 800..100 + 1200).contains(&s.slba));
            if s.op == Op::Read {
                reads += 1;
            }
            w.complete(&s, true);
        }
        assert!((6500..7500).contains(&reads), "reads {reads}");
    }

    #[test]
    fn verify_never_has_two_ios_on_one_unit_and_tracks_generations() {
        let mut w = Workload::new(geo(8), (0, 8), RwPattern::RandRw, 50, true, 3);
        let mut inflight: Vec<IoSpec> = Vec::new();
        let mut last_gen = [0u32; 8];
        for i in 0..5000 {
            while inflight.len() < 4 {
                let s = w.next_io().unwrap();
                assert!(inflight.iter().all(|o| o.unit != s.unit), "unit {} issued twice", s.unit);
                if s.op == Op::Read {
                    assert_eq!(s.generation, last_gen[s.unit as usize]);
                } else {
                    assert_ne!(s.generation, 0);
                }
                inflight.push(s);
            }
            let s = inflight.remove(i % inflight.len());
            if s.op == Op::Write {
                last_gen[s.unit as usize] = s.generation;
            }
            w.complete(&s, true);
        }
        // Stop: drain, then every written unit is read back with its generation.
        w.stop();
        assert_eq!(w.phase(), Phase::Main);
        assert!(w.next_io().is_none());
        for s in inflight.drain(..) {
            if s.op == Op::Write {
                last_gen[s.unit as usize] = s.generation;
            }
            w.complete(&s, true);
        }
        assert_eq!(w.phase(), Phase::Readback);
        let mut seen = 0;
        while let Some(s) = w.next_io() {
            assert_eq!(s.op, Op::Read);
            assert!(s.must_check());
            assert_eq!(s.generation, last_gen[s.unit as usize]);
            seen += 1;
            w.complete(&s, true);
        }
        assert_eq!(seen, last_gen.iter().filter(|g| **g != 0).count());
        assert!(w.is_done());
    }

    #[test]
    fn read_verify_prefills_first() {
        let mut w = Workload::new(geo(4), (0, 4), RwPattern::RandRead, 50, true, 3);
        assert_eq!(w.phase(), Phase::Prefill);
        let pre: Vec<IoSpec> = (0..4).map(|_| w.next_io().unwrap()).collect();
        assert!(pre.iter().all(|s| s.op == Op::Write && s.phase == Phase::Prefill && s.generation == 1));
        assert!(w.next_io().is_none(), "prefill drained: wait for completions");
        for s in &pre[..3] {
            w.complete(s, true);
        }
        assert_eq!(w.phase(), Phase::Prefill);
        w.complete(&pre[3], true);
        assert_eq!(w.phase(), Phase::Main);
        let s = w.next_io().unwrap();
        assert_eq!((s.op, s.generation, s.phase), (Op::Read, 1, Phase::Main));
        assert!(s.must_check());
    }

    #[test]
    fn failed_write_makes_unit_unchecked() {
        let mut w = Workload::new(geo(4), (0, 4), RwPattern::Write, 50, true, 3);
        let s = w.next_io().unwrap();
        w.complete(&s, false);
        w.stop();
        assert_eq!(w.phase(), Phase::Readback);
        assert!(w.next_io().is_none());
        assert!(w.is_done());
    }

    #[test]
    fn no_verify_stop_goes_straight_to_done() {
        let mut w = Workload::new(geo(4), (0, 4), RwPattern::RandWrite, 50, false, 3);
        let s = w.next_io().unwrap();
        w.stop();
        assert!(!w.is_done());
        w.complete(&s, true);
        assert!(w.is_done());
    }
}
