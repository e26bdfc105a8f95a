// clawpen console: small progressive enhancements. Every page works without this file.
"use strict";
(() => {
  // A submit button (or its form) with data-confirm="…" asks before the form posts.
  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement)) return;
    const button = event.submitter;
    const message = (button && button.dataset && button.dataset.confirm) || form.dataset.confirm;
    if (message && !window.confirm(message)) event.preventDefault();
  });

  // Move the keyboard focus to the first field with an error, so it is read out and fixed first.
  document.addEventListener("DOMContentLoaded", () => {
    const invalid = document.querySelector("input[aria-invalid=\"true\"]");
    if (invalid) invalid.focus();
  });
})();
