//! Progress bars on stderr (hidden when stderr is not a terminal, so logs and tests stay
//! clean); stdout carries only model output and command results.

use indicatif::{ProgressBar, ProgressStyle};

/// Models at least this large show a bar while their weights are copied to a GPU.
pub const LARGE_MODEL_BYTES: u64 = 256 << 20;

/// A byte-count bar labelled `label`; the store sets its length.
pub fn bytes_bar(label: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template(
        "{msg} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    );
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar.set_message(label.to_string());
    bar
}

/// A bar counting `len` items (tensors) with a message the caller updates (speed).
pub fn count_bar(label: &str, len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{msg} {wide_bar} {pos}/{len} {eta}") {
        bar.set_style(style);
    }
    bar.set_message(label.to_string());
    bar
}

/// The training bar: steps done of `len`; the message carries loss, speed and the ETA the
/// loop computes (steps left × mean step time).
pub fn train_bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{wide_bar} {pos}/{len} {msg}") {
        bar.set_style(style);
    }
    bar
}
