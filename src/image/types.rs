//! Offset and index newtypes. Guest (virtual disk) and host (image file) coordinates are
//! different spaces; keeping them in distinct types makes mixing them a compile error.

use std::fmt;

macro_rules! newtype {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

newtype!(
    /// A byte offset in the virtual disk.
    GuestOffset
);
newtype!(
    /// A byte offset in the image file.
    HostOffset
);
newtype!(
    /// The index of a cluster in the virtual disk (guest offset >> cluster_bits).
    GuestCluster
);
newtype!(
    /// The index of a cluster in the image file (host offset >> cluster_bits).
    HostCluster
);

impl GuestOffset {
    /// The guest cluster containing this offset.
    pub fn cluster(self, cluster_bits: u32) -> GuestCluster {
        GuestCluster(self.0 >> cluster_bits)
    }
    /// Offset inside its cluster.
    pub fn in_cluster(self, cluster_bits: u32) -> u64 {
        self.0 & ((1u64 << cluster_bits) - 1)
    }
}

impl GuestCluster {
    /// First guest byte of the cluster.
    pub fn offset(self, cluster_bits: u32) -> GuestOffset {
        GuestOffset(self.0 << cluster_bits)
    }
}

impl HostOffset {
    /// The host cluster containing this offset.
    pub fn cluster(self, cluster_bits: u32) -> HostCluster {
        HostCluster(self.0 >> cluster_bits)
    }
}

impl HostCluster {
    /// First host byte of the cluster.
    pub fn offset(self, cluster_bits: u32) -> HostOffset {
        HostOffset(self.0 << cluster_bits)
    }
}
