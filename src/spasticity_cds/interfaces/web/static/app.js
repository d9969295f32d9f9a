// Small progressive enhancements; every page works without JavaScript.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("form.js-feedback").forEach(function (form) {
    var clicked = null;
    form.querySelectorAll("button[type=submit]").forEach(function (button) {
      button.addEventListener("click", function () { clicked = button; });
    });
    form.addEventListener("submit", function (event) {
      if (!window.fetch) { return; }
      event.preventDefault();
      var data = new FormData(form);
      if (clicked) { data.append(clicked.name, clicked.value); }
      var status = form.querySelector(".thanks");
      fetch(form.action, { method: "POST", body: new URLSearchParams(data), headers: { "Accept": "application/json" }, credentials: "same-origin" })
        .then(function (response) { return response.json().then(function (body) { return { ok: response.ok, body: body }; }); })
        .then(function (answer) {
          if (answer.ok) {
            status.textContent = answer.body.message;
            form.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
          } else {
            status.textContent = answer.body.error || "Your feedback could not be saved.";
          }
        })
        .catch(function () { status.textContent = "Your feedback could not be saved. Please try again."; });
    });
  });
  document.querySelectorAll("form.upload[data-max-bytes]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      var input = form.querySelector("input[type=file]");
      var limit = parseInt(form.getAttribute("data-max-bytes"), 10);
      var box = document.querySelector(".js-upload-error");
      if (input && input.files.length && input.files[0].size > limit) {
        event.preventDefault();
        box.textContent = "The file is larger than the limit of " + (limit / 1048576).toFixed(1) + " MB.";
        box.hidden = false;
      }
    });
  });
  // Controls that only work with this script stay hidden without it.
  document.querySelectorAll(".js-only").forEach(function (element) { element.hidden = false; });
  document.querySelectorAll(".js-print").forEach(function (button) {
    button.addEventListener("click", function () { window.print(); });
  });
  document.querySelectorAll(".js-expand").forEach(function (button) {
    button.addEventListener("click", function () {
      document.querySelectorAll("details.why, details.whynot, details.if-started").forEach(function (d) { d.open = true; });
    });
  });
  window.addEventListener("beforeprint", function () {
    document.querySelectorAll("details.why, details.whynot, details.if-started").forEach(function (d) { d.open = true; });
  });
});
