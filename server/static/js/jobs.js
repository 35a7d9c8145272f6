// Background jobs: POST starts (or finds) a job, then /api/jobs/<id> is polled until it is done.
"use strict";

const LVJobs = (() => {
  const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

  /** Start the job at `path` with JSON `body`; `onProgress(job)` sees every poll. Resolves with the
   *  job's result, rejects with an Error carrying the server's message. */
  async function run(path, body, onProgress = () => {}, interval = 500) {
    let job = await LV.api(path, {}, { body });
    for (;;) {
      onProgress(job);
      if (job.status === "done") return job.result;
      if (job.status === "error") throw new Error(job.error || "the job failed");
      await sleep(interval);
      job = await LV.api(`/api/jobs/${encodeURIComponent(job.id)}`);
    }
  }

  /** GET `path` like LV.api; while the server answers 202 "building index" (a large store's match
   *  index is built as a job), `onWait(percent)` sees the job's progress and the request is sent
   *  again once the job is done. Resolves with the real answer. */
  async function whenIndexed(path, params, onWait = () => {}, interval = 500) {
    for (;;) {
      const r = await LV.api(path, params);
      if (!(r && r.status === "building index" && r.job)) return r;
      let job = r.job;
      while (job.status !== "done") {
        if (job.status === "error") throw new Error(job.error || "building the match index failed");
        onWait(job.total ? Math.floor(100 * job.done / job.total) : 0);
        await sleep(interval);
        job = await LV.api(`/api/jobs/${encodeURIComponent(job.id)}`);
      }
    }
  }

  /** Show a job's progress in a .progress element (a bar and a label). */
  function showProgress(box, job) {
    box.hidden = job.status === "done" || job.status === "error";
    const frac = job.total ? job.done / job.total : 0;
    box.querySelector(".bar").style.width = `${Math.round(100 * frac)}%`;
    box.querySelector(".label").textContent = job.status === "queued" ? "queued …" :
      `${job.note || "starting"} ${job.total ? `${job.done}/${job.total}` : ""} · ${job.seconds.toFixed(1)} s`;
  }

  /** The /jobs page: a table of every job the server keeps, refreshed while "refresh" is ticked. */
  async function listPage() {
    const body = document.querySelector("#jobs-table tbody");
    try {
      const r = await LV.api("/api/jobs");
      LV.clearError();
      LV.clear(body);
      for (const j of r.jobs) {
        const pct = j.total ? `${Math.floor(100 * j.done / j.total)}% (${j.done}/${j.total})` : "";
        body.append(LV.el("tr", { dataset: { id: j.id, status: j.status } },
          LV.el("td", {}, new Date(j.created * 1000).toLocaleTimeString()), LV.el("td", {}, j.kind),
          LV.el("td", { class: `status-${j.status}` }, j.status), LV.el("td", { class: "num" }, pct),
          LV.el("td", {}, j.error || j.note), LV.el("td", { class: "num" }, j.seconds.toFixed(1))));
      }
      document.getElementById("jobs-empty").hidden = r.jobs.length > 0;
    } catch (e) { LV.showError(`jobs: ${e.message}`); }
    if (document.getElementById("jobs-auto").checked) setTimeout(listPage, 2000);
  }
  document.addEventListener("DOMContentLoaded", () => {
    if (document.getElementById("jobs-table")) {
      document.getElementById("jobs-auto").addEventListener("change", ev => { if (ev.target.checked) listPage(); });
      listPage();
    }
  });

  return { run, whenIndexed, showProgress };
})();
