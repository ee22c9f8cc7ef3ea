//! Reductions for 256-thread workgroups built on subgroup operations. The same functions, with
// the same signatures, live in reduce_workgroup.wgsl (the path without subgroups).
//
// Teams: a kernel may split its workgroup into teams that each reduce on their own; here a
// team is a subgroup, so `team_sum` is one subgroupAdd with no barrier.
// Whole workgroup: `wg_sum4`, `wg_sum`, `wg_max` reduce over all 256 threads (each subgroup in
// registers, then one value per subgroup in workgroup memory); every thread gets the result.
// They hold barriers: call them from uniform control flow.

// The subgroup builtins a kernel's entry point receives as one argument.
struct Lanes {
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) n_sg: u32,
}

fn team_id(lanes: Lanes) -> u32 {
    return lanes.sg_id;
}

fn team_count(lanes: Lanes) -> u32 {
    return lanes.n_sg;
}

fn team_lane(lanes: Lanes) -> u32 {
    return lanes.sg_lane;
}

fn team_size(lanes: Lanes) -> u32 {
    return lanes.sg_size;
}

// Sum over the caller's team; every member gets it. All members must call it together.
fn team_sum(v: f32, lanes: Lanes) -> f32 {
    return subgroupAdd(v);
}

// One slot per subgroup; wgpu guarantees subgroups of at least 4 lanes, so 256 / 4.
var<workgroup> red_slots: array<vec4<f32>, 64>;

fn wg_sum4(v: vec4<f32>, lid: u32, lanes: Lanes) -> vec4<f32> {
    let s = subgroupAdd(v);
    if (lanes.sg_lane == 0u) {
        red_slots[lanes.sg_id] = s;
    }
    workgroupBarrier();
    var t = vec4<f32>(0.0);
    for (var i = 0u; i < lanes.n_sg; i++) {
        t += red_slots[i];
    }
    workgroupBarrier();
    return t;
}

fn wg_sum(v: f32, lid: u32, lanes: Lanes) -> f32 {
    return wg_sum4(vec4<f32>(v, 0.0, 0.0, 0.0), lid, lanes).x;
}

fn wg_max(v: f32, lid: u32, lanes: Lanes) -> f32 {
    let s = subgroupMax(v);
    if (lanes.sg_lane == 0u) {
        red_slots[lanes.sg_id].x = s;
    }
    workgroupBarrier();
    var t = red_slots[0].x;
    for (var i = 1u; i < lanes.n_sg; i++) {
        t = max(t, red_slots[i].x);
    }
    workgroupBarrier();
    return t;
}
