/* Command-centre map: live worker positions (GeoJSON snapshot + Server-Sent Events).
 *
 * State lives in window.commandCenter (markers by worker id, worker details, the stream),
 * so that tests and the console can inspect it. Canvas renderer: 10,000 circle markers stay
 * smooth; no clustering needed. No external resource is loaded.
 */
(function () {
  "use strict";
  var config = JSON.parse(document.getElementById("cc-config").textContent);
  var style = config.style || {};
  var roles = config.roles || {};

  var map = L.map("map", { preferCanvas: true, zoomControl: true }).setView([39.9, 116.3], 13);
  if (config.basemap && config.basemap.url) {
    L.tileLayer(config.basemap.url, { attribution: config.basemap.attribution || "" }).addTo(map);
  }
  var renderer = L.canvas({ padding: 0.3 });
  var gridLayer = L.geoJSON(null, {
    interactive: false,
    style: { color: style.grid || "#4a6fa5", weight: 1, fill: false, opacity: 0.6 }
  }).addTo(map);
  var incidentLayer = L.geoJSON(config.incidents, {
    pointToLayer: function (f, latlng) {
      return L.circleMarker(latlng, { renderer: renderer, radius: 6, color: "#fff", weight: 1,
        fillColor: style.incident || "#e31a1c", fillOpacity: 0.9 });
    },
    onEachFeature: function (f, layer) {
      layer.bindPopup("事件 Incident #" + esc(f.properties.id) + "<br>" +
        esc(f.properties.category) + " · " + esc(f.properties.status));
    }
  }).addTo(map);
  var workerLayer = L.layerGroup().addTo(map);
  var trackLayer = L.layerGroup().addTo(map);
  L.control.layers(null, {
    "网格 Grid boundaries": gridLayer,
    "工作人员 Workers": workerLayer,
    "未结事件 Open incidents": incidentLayer,
    "轨迹 Track": trackLayer
  }, { collapsed: false }).addTo(map);

  var legend = L.control({ position: "bottomright" });
  legend.onAdd = function () {
    var div = L.DomUtil.create("div", "legend");
    div.innerHTML =
      '<i style="background:' + style.online + '"></i>online<br>' +
      '<i style="background:' + style.stopped + '"></i>stopped<br>' +
      '<i style="background:' + style.offline + '"></i>offline<br>' +
      '<i style="border:2px solid ' + style.inside + '"></i>in own grid<br>' +
      '<i style="border:2px solid ' + style.outside + '"></i>outside own grid';
    return div;
  };
  legend.addTo(map);

  var cc = window.commandCenter = {
    map: map, config: config, markers: {}, positions: {}, workers: {}, events: [],
    scope: config.scope || null, level: config.level, source: null, ready: false,
    received: 0, playback: null
  };

  function esc(v) {
    if (v === null || v === undefined) return "";
    return String(v).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }

  function getJSON(url) {
    return fetch(url, { credentials: "same-origin" }).then(function (r) {
      if (!r.ok) throw new Error(url + " → " + r.status);
      return r.json();
    });
  }

  function qs(params) {
    var parts = [];
    Object.keys(params).forEach(function (k) {
      if (params[k] !== null && params[k] !== undefined && params[k] !== "")
        parts.push(encodeURIComponent(k) + "=" + encodeURIComponent(params[k]));
    });
    return parts.length ? "?" + parts.join("&") : "";
  }

  function status(p) {
    var stale = (Date.now() - p.t) / 1000 > config.offline_after_s;
    if (stale) return "offline";
    return p.state === "stopped" ? "stopped" : "online";
  }

  function markerStyle(p) {
    var s = status(p);
    return {
      renderer: renderer, radius: style.radius || 5, weight: 2,
      color: p.inside ? style.inside : style.outside,
      fillColor: style[s] || "#333", fillOpacity: 0.9
    };
  }

  function popupHtml(id) {
    var p = cc.positions[id] || {};
    var w = cc.workers[id] || {};
    var rows = [
      ["Worker", "#" + id + (w.name ? " " + w.name : "")],
      ["Role", roles[p.role || w.role] || p.role || w.role || ""],
    ];
    if (w.phone) rows.push(["Phone", '<a href="tel:' + esc(w.phone) + '">' + esc(w.phone) + "</a>"]);
    rows.push(["Status", status(p)]);
    rows.push(["Battery", p.battery === null || p.battery === undefined ? "—" : p.battery + "%"]);
    rows.push(["Grid", (p.grid || "—") + (p.inside ? " (own)" : " (outside own grids)")]);
    rows.push(["Last fix", new Date(p.t).toLocaleString()]);
    var html = '<table class="cc-popup">';
    rows.forEach(function (r) {
      html += "<tr><th>" + esc(r[0]) + "</th><td>" + (r[0] === "Phone" ? r[1] : esc(r[1])) + "</td></tr>";
    });
    html += "</table>";
    html += '<button type="button" class="cc-track" data-id="' + esc(id) + '">今日轨迹 Today\'s track</button> ';
    html += '<button type="button" class="cc-play" data-id="' + esc(id) + '">▶ Play</button>';
    return html;
  }

  // p: {id, lon, lat, t (epoch ms), grid, inside, speed, battery, state, role}
  function upsert(p) {
    var old = cc.positions[p.id];
    if (old && old.t > p.t) return; // never move backwards
    if (old && p.role === undefined) p.role = old.role;
    cc.positions[p.id] = p;
    var m = cc.markers[p.id];
    if (!m) {
      m = L.circleMarker([p.lat, p.lon], markerStyle(p));
      m.workerId = p.id;
      m.bindPopup(function () { return popupHtml(p.id); });
      m.addTo(workerLayer);
      cc.markers[p.id] = m;
    } else {
      m.setLatLng([p.lat, p.lon]);
      m.setStyle(markerStyle(p));
    }
  }

  function fromFeature(f) {
    var pr = f.properties;
    return { id: pr.worker_id, lon: f.geometry.coordinates[0], lat: f.geometry.coordinates[1],
      t: Date.parse(pr.recorded_at), grid: pr.grid_code, inside: pr.in_assigned_grid,
      speed: pr.speed, battery: pr.battery, state: pr.stopped ? "stopped" : "online",
      role: pr.role };
  }

  function fromArray(a) {
    return { id: a[0], lon: a[1], lat: a[2], t: a[3], grid: a[4], inside: a[5], speed: a[6],
      battery: a[7], state: a[8] };
  }

  function clearWorkers() {
    workerLayer.clearLayers();
    cc.markers = {};
    cc.positions = {};
  }

  function updateStats() {
    var counts = { online: 0, stopped: 0, offline: 0, outside: 0 };
    Object.keys(cc.positions).forEach(function (id) {
      var p = cc.positions[id];
      counts[status(p)] += 1;
      if (!p.inside) counts.outside += 1;
    });
    document.getElementById("stats").innerHTML =
      "<span>online " + counts.online + "</span><span>stopped " + counts.stopped +
      "</span><span>offline " + counts.offline + "</span><span>outside own grid " +
      counts.outside + "</span>";
  }

  function connect() {
    if (cc.source) cc.source.close();
    var src = new EventSource(config.api.stream + qs({ scope: cc.scope }));
    cc.source = src;
    src.addEventListener("snapshot", function (e) {
      var fc = JSON.parse(e.data);
      clearWorkers();
      fc.features.forEach(function (f) { upsert(fromFeature(f)); });
      cc.ready = true;
      updateStats();
      document.getElementById("conn").textContent = "● live";
    });
    src.addEventListener("positions", function (e) {
      JSON.parse(e.data).forEach(function (a) { upsert(fromArray(a)); cc.received += 1; });
      updateStats();
    });
    src.addEventListener("events", function (e) {
      JSON.parse(e.data).forEach(function (ev) { cc.events.unshift(ev); });
      cc.events = cc.events.slice(0, 200);
    });
    src.addEventListener("resync", function () { connect(); });
    src.onerror = function () {
      document.getElementById("conn").textContent = "○ reconnecting";
    };
  }

  function loadWorkers() {
    return getJSON(config.api.workers + qs({ scope: cc.scope })).then(function (body) {
      cc.workers = {};
      body.workers.forEach(function (w) { cc.workers[w.id] = w; });
    }).catch(function () { cc.workers = {}; });
  }

  function loadGrids() {
    var level = cc.scope ? "unit" : "community";
    return getJSON(config.api.grids + qs({ level: level })).then(function (fc) {
      gridLayer.clearLayers();
      if (cc.scope) {
        var prefix = scopePrefix(cc.scope);
        fc.features = fc.features.filter(function (f) { return String(f.id).indexOf(prefix) === 0; });
      }
      gridLayer.addData(fc);
      var b = gridLayer.getBounds();
      if (b.isValid()) map.fitBounds(b);
    }).catch(function () {});
  }

  function scopePrefix(code) {
    if (/^\d{6}0+$/.test(code)) return code.slice(0, 6);
    if (/^\d{9}0+$/.test(code)) return code.slice(0, 9);
    if (/^\d{12}0+$/.test(code)) return code.slice(0, 12);
    return code;
  }

  function fillScopes() {
    var level = document.getElementById("level").value;
    var select = document.getElementById("scope");
    return getJSON(config.api.grids + qs({ level: level })).then(function (fc) {
      select.innerHTML = '<option value="">— all in my scope —</option>';
      fc.features.forEach(function (f) {
        var o = document.createElement("option");
        o.value = f.id;
        o.textContent = f.id + " " + (f.properties.name || "");
        if (f.id === cc.scope) o.selected = true;
        select.appendChild(o);
      });
    }).catch(function () {});
  }

  function selectScope(code) {
    cc.scope = code || null;
    cc.ready = false;
    var url = new URL(window.location.href);
    if (cc.scope) url.searchParams.set("scope", cc.scope); else url.searchParams.delete("scope");
    url.searchParams.set("level", document.getElementById("level").value);
    window.history.replaceState(null, "", url.toString());
    trackLayer.clearLayers();
    return Promise.all([loadWorkers(), loadGrids()]).then(connect);
  }

  function today() {
    var d = new Date();
    d.setHours(0, 0, 0, 0);
    return d.toISOString();
  }

  cc.showTrack = function (id) {
    return getJSON(config.api.track.replace("{id}", id) + qs({ from: today() }))
      .then(function (feature) {
        trackLayer.clearLayers();
        cc.track = feature;
        if (!feature.geometry) return feature;
        var layer = L.geoJSON(feature, { style: { color: style.track, weight: 3 } });
        layer.addTo(trackLayer);
        (feature.properties.stops || []).forEach(function (s) {
          L.circleMarker([s.lat, s.lon], { renderer: renderer, radius: 7, color: style.track,
            fill: false }).bindTooltip("stop " + Math.round(s.duration_s / 60) + " min")
            .addTo(trackLayer);
        });
        map.fitBounds(layer.getBounds(), { maxZoom: 18 });
        return feature;
      });
  };

  cc.playTrack = function (id, speedup) {
    return cc.showTrack(id).then(function (feature) {
      if (!feature.geometry || feature.geometry.type !== "LineString") return;
      var coords = feature.geometry.coordinates, times = feature.properties.times;
      var marker = L.circleMarker([coords[0][1], coords[0][0]], { renderer: renderer,
        radius: 7, color: "#000", fillColor: style.track, fillOpacity: 1 }).addTo(trackLayer);
      var i = 0, factor = speedup || 600;
      if (cc.playback) clearTimeout(cc.playback);
      function step() {
        i += 1;
        if (i >= coords.length) { cc.playback = null; return; }
        marker.setLatLng([coords[i][1], coords[i][0]]);
        cc.playback = setTimeout(step, Math.min(500, (times[i] - times[i - 1]) / factor));
      }
      step();
    });
  };

  map.on("popupopen", function (e) {
    var node = e.popup.getElement();
    node.querySelectorAll(".cc-track").forEach(function (b) {
      b.addEventListener("click", function () { cc.showTrack(b.dataset.id); });
    });
    node.querySelectorAll(".cc-play").forEach(function (b) {
      b.addEventListener("click", function () { cc.playTrack(b.dataset.id); });
    });
  });

  document.getElementById("level").value = config.level || "community";
  document.getElementById("level").addEventListener("change", function () {
    fillScopes();
  });
  document.getElementById("scope").addEventListener("change", function (e) {
    selectScope(e.target.value);
  });
  setInterval(function () {  // staleness turns markers grey even without new messages
    Object.keys(cc.positions).forEach(function (id) {
      cc.markers[id].setStyle(markerStyle(cc.positions[id]));
    });
    updateStats();
  }, 30000);

  fillScopes();
  selectScope(cc.scope);
})();
