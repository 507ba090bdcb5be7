//! The service's last check result (`service/check/last`, envelope "ISCK").
//! Fast: the pure decoder on one envelope; the first byte is the mode of
//! `island_fuzz::envelope_object` (bit 0 length, bit 1 crc recomputed; bit 2 the rest is
//! the JSON body).
#![no_main]
island_fuzz::envelope_target!(b"ISCK", "last_check", island::service::fuzzing::last_check);
