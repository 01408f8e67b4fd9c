"""What the page does beyond Gradio's own code: small images are enlarged by a whole factor, sharply, a slider
value typed out of range is named when it is put back in range, and a model's download shows its progress bar.

app.py passes `JS` to `demo.launch(js=...)`, which runs it once when the page loads, and `CSS` to `css=...`.
"""

# A model's download shows its progress over the one-line status (layout.model_bar), where Gradio draws the bar
# under the text, outside the line's height: the line grows while a progress bar is in it.
CSS = """
.block.status:has(.progress-bar-wrap) { min-height: 4.5rem; }
"""

# The Explain tab's presentation mode (ui/presentation.py): hidden until its toggle is on, then alone on the page
# (its script hides everything around it), filling the window without scrolling, in projector-sized type. Panel
# images take what the window's height leaves after the text rows, and at most a fifth of its width.
# Gradio adds a copy of each rule under its container's classes, which outweighs a rule starting at `html`: so the
# hiding rule is the one that names html, not the showing one.
CSS += """
html:not(.sdplay-presenting) .sdplay-presentation { display: none !important; }
.sdplay-offstage { display: none !important; }
html.sdplay-presenting, html.sdplay-presenting body { overflow: hidden; }
html.sdplay-presenting .sdplay-presentation {
    display: flex !important; position: fixed; inset: 0; z-index: 50; overflow: hidden; gap: 4px;
    padding: 6px 16px; background: #fff; color: #000;
}
.sdplay-presentation .prose, .sdplay-presentation .prose * {
    font-size: 20px !important; line-height: 1.25; color: #000;
}
.sdplay-presentation .sdplay-step-label .prose, .sdplay-presentation .sdplay-step-label .prose * {
    font-size: 24px !important;
}
.sdplay-presentation .sdplay-keys .prose { color: #333; }
.sdplay-presentation button { font-size: 22px !important; }
.sdplay-presentation .sdplay-words label { font-size: 20px !important; color: #000; }
.sdplay-presentation .sdplay-panels { flex-wrap: nowrap; gap: 12px; }
.sdplay-presentation .sdplay-panel, .sdplay-presentation .sdplay-panel .image-container {
    height: min(18vw, calc(100vh - 470px)) !important; min-height: 120px;
}
.sdplay-presentation .sdplay-filmstrip, .sdplay-presentation .sdplay-filmstrip .image-container {
    height: 84px !important;
}
.sdplay-presentation > * { flex-shrink: 0; }
.sdplay-reel-frame { width: 100%; height: 100%; object-fit: contain; display: block; }
.sdplay-reel-frame:not([src]) { visibility: hidden; }
/* The filmstrip's outline on the shown step: render.CHOSEN_COLOUR, as the page's own strip draws it. */
.sdplay-strip-outline {
    position: absolute; box-sizing: border-box; border: 4px solid rgb(230, 85, 13); pointer-events: none;
}
.sdplay-presentation .block { padding: 2px; border-color: transparent !important; box-shadow: none !important; }
"""

# The Lesson tab (ui/lesson.py): each panel's label above its picture in bold, and Back and Next at the stage's ends.
CSS += """
.lesson-label .prose { font-weight: 600; }
.lesson-moves { justify-content: space-between; }
.lesson-note .prose { color: #b45309; }
"""

# A 64×64 result or an Explain panel of a small run fills a box several times its size. Smoothing blurs it, and a
# fractional factor draws some pixels a screen pixel wider than others. So each image at least twice smaller than
# its box is drawn at the largest whole factor that fits, with square pixels (image-rendering: pixelated), centred
# by padding: its box, and so the page's layout, stays as it was. Larger images keep Gradio's smooth scaling.
# The selectors are the image inputs and outputs (.image-frame), and a gallery's grid and preview.
JS = """
() => {
    const IMAGES = ".image-frame img, .thumbnail-item img, .media-button img, img.sdplay-reel-frame";

    function fit(img) {
        const box = img.getBoundingClientRect();
        // A gallery scrolls when its grid is taller than the gallery: fit the part of the box that shows.
        const gallery = img.closest(".grid-wrap");
        const shown = (gallery ? Math.min(box.bottom, gallery.getBoundingClientRect().bottom) : box.bottom) - box.top;
        const zoom = Math.floor(Math.min(box.width / img.naturalWidth, shown / img.naturalHeight));
        if (!(img.naturalWidth > 0 && zoom >= 2)) {
            img.style.removeProperty("padding");
            img.style.removeProperty("object-fit");
            img.style.removeProperty("image-rendering");
            return;
        }
        const width = zoom * img.naturalWidth, height = zoom * img.naturalHeight;
        const left = Math.floor((box.width - width) / 2), top = Math.floor((shown - height) / 2);
        img.style.boxSizing = "border-box";
        img.style.padding = `${top}px ${box.width - left - width}px ${box.height - top - height}px ${left}px`;
        img.style.objectFit = "contain";
        img.style.imageRendering = "pixelated";
    }

    // Boxes change size with the window, and when a tab that was hidden (a 0×0 box) is shown. Observing an image
    // also fits it once.
    const resized = new ResizeObserver((entries) => entries.forEach((entry) => fit(entry.target)));
    const watch = (img) => resized.observe(img, { box: "border-box" });
    // Each new picture: load events do not bubble, but they can be caught on their way down to the image.
    document.addEventListener("load", (event) => {
        if (event.target instanceof HTMLImageElement && event.target.matches(IMAGES)) {
            watch(event.target);
            fit(event.target);
        }
    }, true);
    // And those that loaded before this ran.
    document.querySelectorAll(IMAGES).forEach(watch);

    // A slider's number box puts a typed value back into its range when it loses focus, silently: say so under it.
    // "change" comes before "blur", and a listener on the way down sees the value before Gradio's own does.
    document.addEventListener("change", (event) => {
        const input = event.target;
        if (!(input instanceof HTMLInputElement) || input.type !== "number" || input.max === "") return;
        const value = Number(input.value), low = Number(input.min), high = Number(input.max);
        if (!(value > high || value < low)) return;
        const used = value > high ? high : low;
        const name = (input.getAttribute("aria-label") || "").replace(/^number input for /, "") || "The value";
        const block = input.closest(".block") || input.parentElement;
        let note = block.querySelector(".sdplay-clamped");
        if (!note) {
            note = document.createElement("div");
            note.className = "sdplay-clamped";
            note.setAttribute("role", "status");
            note.style.cssText = "color: var(--error-text-color, #b91c1c); font-size: var(--text-sm); margin-top: 4px;";
            block.append(note);
        }
        note.textContent = `${name} ${value} is out of range (${low}–${high}): ${used} is used.`;
        clearTimeout(note.timer);
        note.timer = setTimeout(() => note.remove(), 10000);
    }, true);
}
"""
