//! Pictures: an RGB canvas with antialiased lines, filled shapes and text, written as PNG.
//!
//! What `dlc plot` draws its charts on (and image grids are painted on). Text is set in
//! DejaVu Sans, embedded in the binary (`assets/DejaVuSans.ttf`, with its licence beside
//! it), so a picture looks the same on every machine and needs no system fonts; glyphs are
//! rasterised by `ab_glyph`, the file written by `png`.

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};
use std::path::Path;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

pub type Rgb = [u8; 3];

pub const WHITE: Rgb = [255, 255, 255];
pub const BLACK: Rgb = [0, 0, 0];
pub const GRID: Rgb = [225, 225, 225];

/// Where a text's anchor point sits on the text.
#[derive(Clone, Copy, PartialEq)]
pub enum Anchor {
    /// The anchor is the left end of the text's middle line.
    Left,
    /// The middle of the text.
    Center,
    /// The right end of the middle line.
    Right,
}

pub struct Canvas {
    pub width: u32,
    pub height: u32,
    pixels: Vec<u8>,
    font: FontRef<'static>,
}

impl Canvas {
    /// A canvas filled with `bg`.
    pub fn new(width: u32, height: u32, bg: Rgb) -> Canvas {
        let n = width as usize * height as usize;
        let pixels = bg.iter().copied().cycle().take(3 * n).collect();
        let font = FontRef::try_from_slice(FONT).expect("the embedded font parses");
        Canvas {
            width,
            height,
            pixels,
            font,
        }
    }

    /// Blends `c` into pixel (x, y) with coverage `a` in [0, 1]; outside the canvas, nothing.
    pub fn blend(&mut self, x: i64, y: i64, c: Rgb, a: f32) {
        if x < 0 || y < 0 || x >= self.width as i64 || y >= self.height as i64 || a <= 0.0 {
            return;
        }
        let a = a.min(1.0);
        let i = 3 * (y as usize * self.width as usize + x as usize);
        for k in 0..3 {
            let old = self.pixels[i + k] as f32;
            self.pixels[i + k] = (old + (c[k] as f32 - old) * a).round() as u8;
        }
    }

    /// Fills the rectangle [x0, x1) × [y0, y1).
    pub fn rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        for y in y0..y1 {
            for x in x0..x1 {
                self.blend(x, y, c, 1.0);
            }
        }
    }

    /// The outline of a rectangle, one pixel wide.
    pub fn frame(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        self.rect(x0, y0, x1, y0 + 1, c);
        self.rect(x0, y1 - 1, x1, y1, c);
        self.rect(x0, y0, x0 + 1, y1, c);
        self.rect(x1 - 1, y0, x1, y1, c);
    }

    /// An antialiased line of the given width from (x0, y0) to (x1, y1), in pixel
    /// coordinates: every pixel is covered by its distance to the segment.
    pub fn line(&mut self, (x0, y0): (f32, f32), (x1, y1): (f32, f32), width: f32, c: Rgb) {
        let r = width / 2.0;
        let (lx, ly) = (x0.min(x1) - r - 1.0, y0.min(y1) - r - 1.0);
        let (hx, hy) = (x0.max(x1) + r + 1.0, y0.max(y1) + r + 1.0);
        let (dx, dy) = (x1 - x0, y1 - y0);
        let len2 = dx * dx + dy * dy;
        for y in ly.floor() as i64..=hy.ceil() as i64 {
            for x in lx.floor() as i64..=hx.ceil() as i64 {
                let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                let t = if len2 > 0.0 {
                    (((px - x0) * dx + (py - y0) * dy) / len2).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let (qx, qy) = (x0 + t * dx - px, y0 + t * dy - py);
                let d = (qx * qx + qy * qy).sqrt();
                self.blend(x, y, c, r + 0.5 - d);
            }
        }
    }

    /// A filled, antialiased disc.
    pub fn disc(&mut self, (cx, cy): (f32, f32), radius: f32, c: Rgb) {
        for y in (cy - radius - 1.0).floor() as i64..=(cy + radius + 1.0).ceil() as i64 {
            for x in (cx - radius - 1.0).floor() as i64..=(cx + radius + 1.0).ceil() as i64 {
                let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                self.blend(x, y, c, radius + 0.5 - (dx * dx + dy * dy).sqrt());
            }
        }
    }

    /// Width in pixels of `text` at `size` pixels.
    pub fn text_width(&self, text: &str, size: f32) -> f32 {
        let f = self.font.as_scaled(PxScale::from(size));
        let mut w = 0.0;
        let mut prev = None;
        for ch in text.chars() {
            let id = f.glyph_id(ch);
            if let Some(p) = prev {
                w += f.kern(p, id);
            }
            w += f.h_advance(id);
            prev = Some(id);
        }
        w
    }

    /// Draws `text` at `size` pixels with its anchor at (x, y); `vertical` turns it a
    /// quarter to the left (reading upwards, as a y-axis label).
    pub fn text(&mut self, text: &str, (x, y): (f32, f32), size: f32, anchor: Anchor, c: Rgb) {
        self.text_rotated(text, (x, y), size, anchor, c, false)
    }

    pub fn text_rotated(
        &mut self,
        text: &str,
        (x, y): (f32, f32),
        size: f32,
        anchor: Anchor,
        c: Rgb,
        vertical: bool,
    ) {
        let f = self.font.as_scaled(PxScale::from(size));
        let w = self.text_width(text, size);
        let start = match anchor {
            Anchor::Left => 0.0,
            Anchor::Center => -w / 2.0,
            Anchor::Right => -w,
        };
        // The baseline sits half the cap height below the anchor's middle line.
        let baseline = f.ascent() * 0.35;
        let mut pen = start;
        let mut prev = None;
        let mut cover: Vec<(i64, i64, f32)> = Vec::new();
        for ch in text.chars() {
            let id = f.glyph_id(ch);
            if let Some(p) = prev {
                pen += f.kern(p, id);
            }
            let glyph = id.with_scale_and_position(PxScale::from(size), point(pen, baseline));
            pen += f.h_advance(id);
            prev = Some(id);
            if let Some(o) = self.font.outline_glyph(glyph) {
                let b = o.px_bounds();
                o.draw(|gx, gy, a| {
                    cover.push((b.min.x as i64 + gx as i64, b.min.y as i64 + gy as i64, a))
                });
            }
        }
        for (u, v, a) in cover {
            let (px, py) = if vertical { (v, -u) } else { (u, v) };
            self.blend(x.round() as i64 + px, y.round() as i64 + py, c, a);
        }
    }

    /// Writes the canvas as an 8-bit RGB PNG.
    pub fn save_png(&self, path: &Path) -> Result<(), String> {
        let err =
            |e: &dyn std::fmt::Display| format!("{}: cannot write the PNG: {e}", path.display());
        let file = std::fs::File::create(path).map_err(|e| err(&e))?;
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), self.width, self.height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(|e| err(&e))?;
        w.write_image_data(&self.pixels).map_err(|e| err(&e))?;
        w.finish().map_err(|e| err(&e))
    }

    /// The pixel at (x, y) (for tests).
    pub fn pixel(&self, x: u32, y: u32) -> Rgb {
        let i = 3 * (y as usize * self.width as usize + x as usize);
        [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
    }
}
