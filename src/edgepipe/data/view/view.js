// The edgepipe live view page: the MJPEG stream, a per-part latency chart against budget on a canvas, and
// counters, from /metrics.json every half second. Written for edgepipe; no third-party code, works offline.
"use strict";
(function () {
  var q = new URLSearchParams(location.search);
  var tok = q.get("token");
  var suffix = tok ? "?token=" + encodeURIComponent(tok) : "";
  var img = document.getElementById("frame");
  img.onload = function () { img.removeAttribute("width"); img.removeAttribute("height"); };
  img.src = "stream.mjpg" + suffix;
  var canvas = document.getElementById("chart");
  var ctx = canvas.getContext("2d");

  function fmt(ms) { return ms >= 100 ? ms.toFixed(0) : ms >= 1 ? ms.toFixed(1) : ms.toFixed(3); }

  function draw(parts) {
    var W = canvas.width, rowH = 22, left = 170, right = 60;
    canvas.height = Math.max(60, 24 + parts.length * rowH);
    var H = canvas.height;
    ctx.fillStyle = "#111"; ctx.fillRect(0, 0, W, H);
    var top = 0;
    parts.forEach(function (p) { top = Math.max(top, p.p99_ms, p.budget_ms || 0); });
    top = top > 0 ? top * 1.1 : 1;
    var scale = (W - left - right) / top;
    ctx.font = "12px sans-serif"; ctx.textBaseline = "middle";
    parts.forEach(function (p, i) {
      var y = 12 + i * rowH;
      var over = p.budget_ms != null && p.p99_ms > p.budget_ms;
      ctx.fillStyle = "#ccc"; ctx.textAlign = "right";
      ctx.fillText(p.part.length > 26 ? "…" + p.part.slice(-25) : p.part, left - 6, y + rowH / 2 - 2);
      ctx.fillStyle = over ? "#d9534f" : "#3c9";
      ctx.fillRect(left, y + 3, Math.max(1, p.p50_ms * scale), rowH - 10);
      ctx.fillStyle = "#888";
      ctx.fillRect(left, y + rowH - 7, Math.max(1, p.p99_ms * scale), 2);
      if (p.budget_ms != null) {
        ctx.fillStyle = "#f33";
        ctx.fillRect(left + p.budget_ms * scale - 1, y, 3, rowH - 4);
      }
      ctx.fillStyle = "#ccc"; ctx.textAlign = "left";
      ctx.fillText(fmt(p.p50_ms) + " ms", Math.min(W - right + 4, left + p.p99_ms * scale + 4), y + rowH / 2 - 2);
    });
    canvas.dataset.drawn = String(parts.length);
  }

  function row(cells, cls) {
    var tr = document.createElement("tr");
    if (cls) tr.className = cls;
    cells.forEach(function (c) { var td = document.createElement("td"); td.textContent = c; tr.appendChild(td); });
    return tr;
  }

  function counters(m) {
    var t = document.getElementById("counters");
    t.textContent = "";
    t.appendChild(row(["link", "rate/s", "dropped", "fill"]));
    Object.keys(m.links || {}).forEach(function (k) {
      var l = m.links[k];
      t.appendChild(row([k, (l.rate_hz || 0).toFixed(1), String(l.dropped || 0),
                         ((l.fill || 0) * 100).toFixed(0) + " %"]));
    });
    Object.keys(m.stages || {}).forEach(function (k) {
      var s = m.stages[k];
      if (s.missed !== undefined) t.appendChild(row([k + " missed IMU deadlines", String(s.missed), "", ""],
                                                    s.missed > 0 ? "over" : ""));
    });
    var v = m.view || {};
    t.appendChild(row(["view frames shown / skipped", String(v.frames_shown || 0), String(v.frames_skipped || 0), ""]));
  }

  function tick() {
    fetch("metrics.json" + suffix, { cache: "no-store" }).then(function (r) { return r.json(); }).then(function (m) {
      document.getElementById("name").textContent = m.name || "?";
      document.getElementById("uptime").textContent = m.uptime_s != null ? "up " + m.uptime_s + " s" : "";
      draw(m.parts || []);
      counters(m);
    }).catch(function () {}).then(function () { setTimeout(tick, 500); });
  }
  tick();
})();
