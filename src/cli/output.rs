//! Lines on stdout for commands whose output may be piped into `head`: once the reader has
//! gone, the command ends quietly (exit 0, as ripgrep does) instead of `println!` panicking on
//! the broken pipe.

use std::io::{self, Write};

pub fn line(args: std::fmt::Arguments) {
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        // Anything else (a full disk behind a redirect) the user must hear about.
        eprintln!("avatar: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// `println!` that ends the command quietly when stdout's reader has gone.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::output::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;
