// Runs only in browsers without ES modules (which cannot run the demo): say so instead of hanging.
document.addEventListener("DOMContentLoaded", function () {
  var box = document.getElementById("unsupported");
  box.textContent = "This browser is too old for the demo (no JavaScript modules, WebAssembly SIMD). " +
    "Try a recent Chrome, Safari (iOS 16.4+) or Firefox.";
  box.removeAttribute("hidden");
  document.getElementById("loading").setAttribute("hidden", "");
  document.body.setAttribute("data-state", "unsupported");
});
