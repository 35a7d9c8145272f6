// Landing page: while demo stores are being built, poll the status and reload when they are ready.
"use strict";
(function () {
  const busy = s => s.status === "queued" || s.status === "building";
  const initial = LV.pageData().status || { stores: [] };
  if (!initial.stores.some(busy)) return;
  const timer = setInterval(async () => {
    try {
      const status = await LV.api("/api/status");
      if (!status.stores.some(busy)) { clearInterval(timer); window.location.reload(); }
    } catch (e) { LV.showError(e.message); clearInterval(timer); }
  }, 2000);
})();
