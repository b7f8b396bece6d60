// Drive NNI 3.0's own local GPU scheduler (nni_node/common/trial_keeper/task_scheduler/scheduler.js) with a mocked
// GPU inventory, the way the trial keeper does for an experiment: `concurrency` trials run at once; when one more
// is due, the oldest finishes (is released) first.
//   node scheduler_probe.js '{"gpus": 1, "processes": [], "request": 0.5,
//                             "restrictions": {"onlyUseIndices": null, "rejectActive": false},
//                             "concurrency": 1, "trials": 3}'
// Prints one JSON list: per trial its CUDA_VISIBLE_DEVICES (null: NNI refuses to schedule it, so the manager
// would retry forever; "error: ...": the scheduler threw) and the trials running beside it.
// NNI_NODE_DIR must name the nni_node package folder.
require('app-module-path').addPath(process.env.NNI_NODE_DIR);
global.nniUnitTest = true;  // NNI's unit-test globals: no manager, no log files
require('common/globals/unittest');
const { TaskScheduler, UnitTestHelpers } = require('common/trial_keeper/task_scheduler/scheduler');

async function main() {
  const spec = JSON.parse(process.argv[2]);
  const gpus = [...Array(spec.gpus).keys()].map(index => ({ index }));
  UnitTestHelpers.mockGpuInfo({ success: true, gpuNumber: spec.gpus, gpus, processes: spec.processes || [] });
  const scheduler = new TaskScheduler();
  await scheduler.init();
  const running = [];
  const out = [];
  for (let t = 0; t < spec.trials; t++) {
    if (running.length >= spec.concurrency) {
      await scheduler.release('exp', running.shift());
    }
    let devices;
    try {
      const env = await scheduler.schedule('exp', `t${t}`, spec.request, spec.restrictions);
      devices = env === null ? null : env.CUDA_VISIBLE_DEVICES;
    } catch (error) {
      devices = `error: ${error.message}`;
    }
    out.push({ trial: `t${t}`, devices, beside: running.slice() });
    if (devices === null || String(devices).startsWith('error')) break;  // NNI would wait here forever
    running.push(`t${t}`);
  }
  console.log(JSON.stringify(out));
}

main().then(() => process.exit(0), error => { console.error(error); process.exit(1); });
