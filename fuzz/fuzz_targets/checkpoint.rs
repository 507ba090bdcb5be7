//! Backup checkpoints (`checkpoints/<holder>/<seq>`, envelope "ISCP"), with the tree state a re-run resumes.
//! Fast: the pure decoder on one envelope; the first byte is the mode of
//! `island_fuzz::envelope_object` (bit 0 length, bit 1 crc recomputed; bit 2 the rest is
//! the JSON body).
#![no_main]
island_fuzz::envelope_target!(b"ISCP", "checkpoint", island::repo::fuzzing::checkpoint);
