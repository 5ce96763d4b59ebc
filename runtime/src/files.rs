//! Reading input files with bounds: a model, an image or a key is a regular file under a size
//! cap, so that `/dev/zero`, a FIFO or a runaway file ends in an error naming it, not in a read
//! until memory runs out.

use std::io::Read as _;
use std::path::Path;

/// Default cap on a model file (`engine.max_model_mb`): ONNX's protobuf limit is 2 GB, this
/// project's models are a few MB.
pub const MODEL_CAP_MB: f64 = 1024.0;
/// Cap on one image file (replay, `infer`, `eval`): a 16-bit 8K RGB PNG is under this.
pub const IMAGE_CAP: u64 = 512 << 20;
/// Cap on a signature, key or certificate file.
pub const SMALL_CAP: u64 = 1 << 20;

/// Read `path` whole if it is a regular file of at most `cap` bytes; `key` names the setting
/// that points at it (e.g. `engine.model`, `engine.max_model_mb`), for the message.
pub fn read_capped(path: &Path, cap: u64, key: &str) -> std::io::Result<Vec<u8>> {
    let meta = std::fs::metadata(path)?;
    let ft = meta.file_type();
    if !ft.is_file() {
        use std::os::unix::fs::FileTypeExt as _;
        let what = if ft.is_dir() {
            "a folder"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else if ft.is_fifo() {
            "a pipe"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("is {what}, not a regular file: point {key} at a file"),
        ));
    }
    let too_big = |n: u64| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "is {:.1} MB, over the {:.1} MB cap ({key})",
                n as f64 / 1048576.0,
                cap as f64 / 1048576.0
            ),
        )
    };
    if meta.len() > cap {
        return Err(too_big(meta.len()));
    }
    // The file may grow while it is read: never take more than the cap.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)?
        .take(cap + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

/// [`read_capped`] as UTF-8 text.
pub fn read_text_capped(path: &Path, cap: u64, key: &str) -> std::io::Result<String> {
    String::from_utf8(read_capped(path, cap, key)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "is not UTF-8 text"))
}

/// A cap in MB as bytes.
pub fn mb(cap_mb: f64) -> u64 {
    (cap_mb * 1048576.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_pipes_and_folders_are_refused_before_a_byte_is_read() {
        for (p, what) in [
            ("/dev/zero", "a device"),
            ("/dev/urandom", "a device"),
            ("/tmp", "a folder"),
        ] {
            let e = read_capped(Path::new(p), 1 << 20, "engine.model").unwrap_err();
            assert!(e.to_string().contains(what), "{p}: {e}");
            assert!(e.to_string().contains("engine.model"), "{p}: {e}");
        }
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_capped(&fifo, 1 << 20, "camera.replay.dir").unwrap_err();
        assert!(e.to_string().contains("a pipe"), "{e}");
    }

    #[test]
    fn a_file_over_the_cap_is_refused_and_one_under_is_read() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("m.onnx");
        std::fs::write(&f, vec![7u8; 3000]).unwrap();
        let e = read_capped(&f, 2000, "engine.max_model_mb").unwrap_err();
        assert!(e.to_string().contains("over the"), "{e}");
        assert!(e.to_string().contains("engine.max_model_mb"), "{e}");
        assert_eq!(read_capped(&f, 3000, "k").unwrap().len(), 3000);
    }
}
