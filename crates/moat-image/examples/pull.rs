//! Pull (and unpack) an image into a store: `pull [--root DIR] [--platform OS/ARCH]
//! [--insecure HOST:PORT]... [--no-unpack] [--quiet] REFERENCE`. Used by `bench/pull.py`; the
//! `moat` CLI will be the real front end.

use std::process::ExitCode;

use moat_image::{pull_blocking, LineProgress, NoProgress, Progress, PullOptions, Store};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut root = moat_image::store::DEFAULT_ROOT.to_string();
    let mut opts = PullOptions::default();
    let mut quiet = false;
    let mut reference = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--root" => root = args.next().unwrap_or_default(),
            "--insecure" => opts.insecure_registries.extend(args.next()),
            "--no-unpack" => opts.unpack = None,
            "--quiet" => quiet = true,
            "--platform" => match args.next().unwrap_or_default().parse() {
                Ok(p) => opts.platform = p,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            },
            _ if reference.is_none() && !a.starts_with('-') => reference = Some(a),
            _ => {
                eprintln!("usage: pull [--root DIR] [--platform OS/ARCH] [--insecure HOST:PORT] [--no-unpack] [--quiet] REFERENCE");
                return ExitCode::from(2);
            }
        }
    }
    let Some(reference) = reference else {
        eprintln!("error: no image reference");
        return ExitCode::from(2);
    };
    let progress: Box<dyn Progress> = if quiet {
        Box::new(NoProgress)
    } else {
        Box::new(LineProgress::default())
    };
    let res =
        Store::open(&root).and_then(|s| pull_blocking(&s, &reference, &opts, progress.as_ref()));
    match res {
        Ok(p) => {
            println!("{} {}", p.name, p.manifest_digest);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
