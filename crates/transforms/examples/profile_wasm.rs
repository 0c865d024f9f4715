//! A profile of the guest's own code: runs the built `form_flatten.wasm` on 1000 enriched
//! records through wasmtime directly (fuel on, as `SmartEngine::new()` sets it), with
//! wasmtime's perf map on, so `perf record` names the module's functions:
//!
//! cargo build --release -p form-transforms --example profile_wasm
//! perf record -e cpu-clock -g target/release/examples/profile_wasm [WASM] [REPS]
//! perf report --no-children --sort symbol

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use fluvio_smartmodule::Record;
use fluvio_smartmodule::dataplane::core::Encoder;
use fluvio_smartmodule::dataplane::smartmodule::SmartModuleInput;
use wasmtime::{Config, Engine, Linker, Module, ProfilingStrategy, Store};

/// The engine's encoding version (fluvio-smartengine 0.50.1's default).
const VERSION: i16 = 22;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let wasm = common::wasm_arg(&args);
    let reps: usize = args.get(1).map_or(200, |a| a.parse().expect("REPS"));

    let records: Vec<Record> = common::mixed_records(1000)
        .into_iter()
        .map(Record::new)
        .collect();
    let mut input = SmartModuleInput::try_from_records(records, VERSION)?;
    input.set_base_offset(0);
    let mut wire = Vec::new();
    input.encode(&mut wire, VERSION)?;

    let mut config = Config::new();
    config.consume_fuel(true);
    config.profiler(ProfilingStrategy::PerfMap);
    let engine = Engine::new(&config)?;
    let module = Module::from_file(&engine, &wasm)?;
    let mut linker = Linker::new(&engine);
    linker.func_wrap("env", "copy_records", |_ptr: i32, _len: i32| {})?;
    let mut store = Store::new(&engine, ());
    store.set_fuel(u64::MAX / 2)?;
    let instance = linker.instantiate(&mut store, &module)?;
    let memory = instance
        .get_memory(&mut store, "memory")
        .ok_or_else(|| anyhow::anyhow!("no memory export"))?;
    let alloc = instance.get_typed_func::<i32, i32>(&mut store, "alloc")?;
    let map = instance.get_typed_func::<(i32, i32, u32), i32>(&mut store, "map")?;

    let fuel_before = store.get_fuel()?;
    let start = Instant::now();
    for _ in 0..reps {
        let len = i32::try_from(wire.len())?;
        let ptr = alloc.call(&mut store, len)?;
        memory.write(&mut store, usize::try_from(ptr)?, &wire)?;
        let n = map.call(&mut store, (ptr, len, VERSION as u32))?;
        anyhow::ensure!(n == 1000, "map answered {n}");
    }
    let per = start.elapsed().as_secs_f64() * 1e6 / (reps * 1000) as f64;
    // Fuel is the count of WASM operations run: the same on a busy machine as on an idle one.
    let fuel = (fuel_before - store.get_fuel()?) as f64 / (reps * 1000) as f64;
    println!(
        "{wasm}: {per:.2} us/record in the guest (fuel on, no host decode), {fuel:.0} fuel/record"
    );
    Ok(())
}
