// Typesets the formulas of the pages with the vendored KaTeX (docs/vendor/katex/), so that
// the site needs no network to show them. pymdownx.arithmatex, in generic mode, leaves each
// formula as an element of class "arithmatex" holding \( ... \) (inline) or \[ ... \]
// (display). document$ is Material's page observable: it fires on every page load,
// instant navigation included.
document$.subscribe(() => {
  for (const element of document.querySelectorAll(".arithmatex")) {
    const text = element.textContent.trim();
    const display = text.startsWith("\\[");
    katex.render(text.slice(2, -2), element, { displayMode: display, throwOnError: false });
  }
});
