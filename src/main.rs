//! The `wxdispatch` binary: parse the command line, hand over to the library.

/// mimalloc instead of glibc malloc: the worker allocates and frees small buffers for every
/// job; `wxdispatch bench` measured the difference (see the README's Performance section).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // Keeps the allocator settings' constructor linked in (see `wxdispatch::alloc`).
    let _ = wxdispatch::alloc::configured();
    wxdispatch::cli::main()
}
