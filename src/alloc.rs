//! Allocator settings for the binary (which installs mimalloc as the global allocator).
//!
//! mimalloc is markedly faster than glibc malloc for the worker's many small per-job buffers,
//! but by default it commits whole arenas eagerly on Linux, which shows up as resident memory
//! the worker never uses. Lazy commit keeps the peak RSS near what is live.

/// `mi_option_arena_eager_commit` in the `mi_option_e` enum of the mimalloc v3 sources that
/// `libmimalloc-sys` builds (`c_src/mimalloc/v3/include/mimalloc.h`); `libmimalloc-sys`
/// exports no constant for it. (Were the enum to move, a different option would be set: the
/// memory figure of `wxdispatch bench` shows it, about 82 MB peak instead of 60.)
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Apply the settings. mimalloc reserves its first arena at the process's first allocation,
/// before `main` (the Rust runtime allocates), so this runs as an ELF constructor: from
/// `.init_array`, before the runtime starts. Linking this module in is enough.
extern "C" fn configure() {
    // SAFETY: mi_option_set only stores the value in mimalloc's option table; it allocates
    // nothing.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
}

#[used]
#[cfg(target_os = "linux")]
#[unsafe(link_section = ".init_array")]
static CONFIGURE: extern "C" fn() = configure;

/// For the binary's `main`: a reference that keeps this module linked in.
pub fn configured() -> bool {
    // SAFETY: reads mimalloc's option table.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_ARENA_EAGER_COMMIT) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_constructor_ran_before_main() {
        // This test binary links the module too: the option was set before the test harness
        // started (mimalloc's default for it is 2).
        assert!(configured());
    }
}
