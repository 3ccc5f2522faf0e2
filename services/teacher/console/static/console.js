// The console's only script: refresh live parts, confirm destructive forms. Pages work without it.
"use strict";

// <div data-live="URL" data-every="ms">: replace the contents with URL's fragment until it says data-final.
for (const box of document.querySelectorAll("[data-live]")) {
  if (box.querySelector("[data-final]")) continue;
  const every = Number(box.dataset.every || 1000);
  const tick = async () => {
    try {
      const response = await fetch(box.dataset.live, {credentials: "same-origin"});
      if (response.status === 401) { window.location.assign(box.dataset.login); return; }
      if (response.ok) box.innerHTML = await response.text();  // server-rendered, escaped HTML
    } catch (error) { /* the teacher restarting: try again */ }
    if (!box.querySelector("[data-final]")) window.setTimeout(tick, every);
  };
  window.setTimeout(tick, every);
}

// <form data-confirm="question">: ask before posting.
for (const form of document.querySelectorAll("form[data-confirm]")) {
  form.addEventListener("submit", (event) => {
    if (!window.confirm(form.dataset.confirm)) event.preventDefault();
  });
}
