//! The f32 CPU reference engine (openpi's math, no shortcuts that change results).
