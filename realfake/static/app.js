// realfake web app: the one script (served at /static/app.js). The pages work without it; it only saves a
// pointless upload by checking the number and size of the chosen files in the browser first.
document.addEventListener('DOMContentLoaded', () => {
  const form = document.querySelector('form.detect');
  if (!form) return;
  form.addEventListener('submit', (ev) => {
    const input = form.querySelector('input[type=file]');
    const maxBytes = +form.dataset.maxBytes, maxFiles = +form.dataset.maxFiles;
    const tooBig = [...input.files].filter((f) => f.size > maxBytes).map((f) => f.name);
    let msg = '';
    if (input.files.length > maxFiles) msg = `Please choose at most ${maxFiles} images.`;
    else if (tooBig.length) msg = `Too large (limit ${(maxBytes / 1e6).toFixed(1)} MB): ${tooBig.join(', ')}`;
    if (msg) {
      ev.preventDefault();
      const box = document.getElementById('client-msg');
      box.textContent = msg;
      box.hidden = false;
    }
  });
});
