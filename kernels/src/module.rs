//! Which compiled image of a module a device loads.

/// The four images build.rs embeds for one `.cu` file.
#[derive(Debug)]
pub struct ModuleImages {
    pub name: &'static str,
    pub sm80: &'static [u8],
    pub sm90a: &'static [u8],
    pub ptx80: &'static str,
    pub ptx90: &'static str,
}

/// The image chosen for a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cuda", derive(serde::Serialize))]
pub enum ImageKind {
    /// sm_80 cubin: compute capability 8.x (A100, A10, L4, RTX 30/40 run sm_80 code).
    Sm80Cubin,
    /// sm_90a cubin: compute capability 9.0 (H100, H200).
    Sm90aCubin,
    /// compute_90 PTX compiled by the driver: anything newer than 9.0.
    Ptx90Jit,
}

impl ImageKind {
    /// 8.x → sm_80 cubin, 9.0 → sm_90a cubin, newer → PTX JIT; older than 8.0 is refused.
    pub fn for_compute_capability(major: i32, minor: i32) -> Result<Self, crate::KernelError> {
        match (major, minor) {
            (8, _) => Ok(ImageKind::Sm80Cubin),
            (9, 0) => Ok(ImageKind::Sm90aCubin),
            (m, _) if m >= 9 => Ok(ImageKind::Ptx90Jit),
            _ => Err(crate::KernelError::UnsupportedDevice { major, minor }),
        }
    }

    /// Whether kernels of this image may be launched programmatically: only the sm_90a cubin,
    /// the one SASS the build checks to wait for its predecessor before touching memory (the
    /// sm_80 cubin has no `griddepcontrol`; a driver JIT of the PTX is not checked).
    pub fn supports_programmatic_launch(self) -> bool {
        self == ImageKind::Sm90aCubin
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ImageKind::Sm80Cubin => "sm_80 cubin",
            ImageKind::Sm90aCubin => "sm_90a cubin",
            ImageKind::Ptx90Jit => "compute_90 PTX (JIT)",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_follow_compute_capability() {
        assert_eq!(ImageKind::for_compute_capability(8, 0).ok(), Some(ImageKind::Sm80Cubin));
        assert_eq!(ImageKind::for_compute_capability(8, 9).ok(), Some(ImageKind::Sm80Cubin));
        assert_eq!(ImageKind::for_compute_capability(9, 0).ok(), Some(ImageKind::Sm90aCubin));
        assert_eq!(ImageKind::for_compute_capability(10, 0).ok(), Some(ImageKind::Ptx90Jit));
        assert_eq!(ImageKind::for_compute_capability(12, 0).ok(), Some(ImageKind::Ptx90Jit));
        assert!(ImageKind::for_compute_capability(7, 5).is_err());
    }

    #[test]
    fn only_the_checked_hopper_cubin_launches_programmatically() {
        let pdl = |major, minor| ImageKind::for_compute_capability(major, minor).is_ok_and(|i| i.supports_programmatic_launch());
        assert!(pdl(9, 0));
        assert!(!pdl(8, 0) && !pdl(8, 9) && !pdl(10, 0) && !pdl(12, 0));
    }
}
