//! Turns on WGSL's `f16` type. Assembled first, and only when the device has SHADER_F16.
enable f16;
