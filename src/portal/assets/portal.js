// Copy buttons: each copies the text of the element its data-copy names.
document.querySelectorAll('button[data-copy]').forEach(function (b) {
  b.addEventListener('click', function () {
    var el = document.getElementById(b.getAttribute('data-copy'));
    if (!el || !navigator.clipboard) { return; }
    navigator.clipboard.writeText(el.textContent).then(function () {
      var label = b.textContent;
      b.textContent = 'Copied';
      setTimeout(function () { b.textContent = label; }, 1500);
    });
  });
});
