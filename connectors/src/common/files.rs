//! Whether a failed file operation may succeed when tried again: the one classification of
//! `std::io` errors for the outputs that write files (the Parquet store, the dead-letter folder).

use engine::Retry;
use std::io::ErrorKind;

/// Permanent when the path itself is wrong or refused (a file where a folder should be, no
/// permission, a read-only file system): the same write fails the same way until someone acts.
/// Transient otherwise (a full disk, an interrupted call, a stale network mount), which may clear.
pub fn io_retry(e: &std::io::Error) -> Retry {
    match e.kind() {
        ErrorKind::PermissionDenied
        | ErrorKind::NotADirectory
        | ErrorKind::IsADirectory
        | ErrorKind::AlreadyExists
        | ErrorKind::ReadOnlyFilesystem
        | ErrorKind::InvalidFilename
        | ErrorKind::InvalidInput => Retry::Permanent,
        _ => Retry::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_path_is_permanent_and_a_full_disk_is_not() {
        let class = |kind: ErrorKind| io_retry(&kind.into());
        assert_eq!(class(ErrorKind::NotADirectory), Retry::Permanent);
        assert_eq!(class(ErrorKind::PermissionDenied), Retry::Permanent);
        assert_eq!(class(ErrorKind::StorageFull), Retry::Transient);
        assert_eq!(class(ErrorKind::Interrupted), Retry::Transient);
    }
}
