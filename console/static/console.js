// The console's own script: small, no build step. Pages work without it;
// it only helps keyboard and screen-reader users after htmx swaps a part.
document.addEventListener("htmx:afterSwap", function (event) {
  var alert = event.detail.target.querySelector("[role=alert]");
  if (alert) {
    alert.setAttribute("tabindex", "-1");
    alert.focus();
  }
});
// A dialog opened by a button with data-opens="ID"; Escape closes it (native).
document.addEventListener("click", function (event) {
  var opener = event.target.closest("[data-opens]");
  if (opener) {
    var dialog = document.getElementById(opener.getAttribute("data-opens"));
    if (dialog && dialog.showModal) {
      event.preventDefault();
      dialog.showModal();
      dialog.dispatchEvent(new CustomEvent("cbr:opened"));
      var first = dialog.querySelector("input, select, textarea, button");
      if (first) { first.focus(); }
    }
  }
  var closer = event.target.closest("[data-closes]");
  if (closer) {
    var open = closer.closest("dialog");
    if (open) { event.preventDefault(); open.close(); }
  }
});
