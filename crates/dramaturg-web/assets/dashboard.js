// dramaturg dashboard: confirmations before destructive actions, and the
// overview's optional auto-refresh. Everything works without it.
"use strict";
document.addEventListener("submit", (event) => {
  const question = event.target.getAttribute("data-confirm");
  if (question && !window.confirm(question)) event.preventDefault();
});
document.addEventListener("DOMContentLoaded", () => {
  const box = document.getElementById("autorefresh");
  if (!box) return;
  box.checked = sessionStorage.getItem("dramaturg-autorefresh") === "1";
  let timer = null;
  const arm = () => {
    clearTimeout(timer);
    if (box.checked) timer = setTimeout(() => location.reload(), 5000);
  };
  box.addEventListener("change", () => {
    sessionStorage.setItem("dramaturg-autorefresh", box.checked ? "1" : "0");
    arm();
  });
  arm();
});
