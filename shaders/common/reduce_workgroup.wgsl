//! Reductions for 256-thread workgroups through trees in workgroup memory: the path for devices
// without subgroup operations. Same functions and signatures as reduce_subgroup.wgsl.
//
// Teams are 32 consecutive threads (8 per workgroup). Every reduction here holds barriers, so
// all threads must call it the same number of times, from uniform control flow.

// The entry point's builtins for this path (a 1-D workgroup, so x is the thread index).
struct Lanes {
    @builtin(local_invocation_id) local: vec3<u32>,
}

const TEAM: u32 = 32u;

fn team_id(lanes: Lanes) -> u32 {
    return lanes.local.x / TEAM;
}

fn team_count(lanes: Lanes) -> u32 {
    return 256u / TEAM;
}

fn team_lane(lanes: Lanes) -> u32 {
    return lanes.local.x % TEAM;
}

fn team_size(lanes: Lanes) -> u32 {
    return TEAM;
}

var<workgroup> team_tree: array<f32, 256>;

// Sum over the caller's team; every member gets it. All threads must call it together.
fn team_sum(v: f32, lanes: Lanes) -> f32 {
    let i = lanes.local.x;
    let lane = team_lane(lanes);
    team_tree[i] = v;
    workgroupBarrier();
    for (var s = TEAM / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            team_tree[i] += team_tree[i + s];
        }
        workgroupBarrier();
    }
    let t = team_tree[i - lane];
    workgroupBarrier();
    return t;
}

var<workgroup> red_tree: array<vec4<f32>, 256>;

fn wg_sum4(v: vec4<f32>, lid: u32, lanes: Lanes) -> vec4<f32> {
    red_tree[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red_tree[lid] += red_tree[lid + s];
        }
        workgroupBarrier();
    }
    let t = red_tree[0];
    workgroupBarrier();
    return t;
}

fn wg_sum(v: f32, lid: u32, lanes: Lanes) -> f32 {
    return wg_sum4(vec4<f32>(v, 0.0, 0.0, 0.0), lid, lanes).x;
}

fn wg_max(v: f32, lid: u32, lanes: Lanes) -> f32 {
    red_tree[lid].x = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red_tree[lid].x = max(red_tree[lid].x, red_tree[lid + s].x);
        }
        workgroupBarrier();
    }
    let t = red_tree[0].x;
    workgroupBarrier();
    return t;
}
