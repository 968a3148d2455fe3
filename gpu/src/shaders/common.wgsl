// Shared header, prepended to every kernel's source by `kernels.rs` (`shader!`).
//
// Large dispatches are spread over a 2-D grid (`GpuContext::grid`: at most
// `max_compute_workgroups_per_dimension` workgroups along x); a kernel's linear workgroup
// number is y * width + x.
fn group_id(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

