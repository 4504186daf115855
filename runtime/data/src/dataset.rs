//! The in-memory form of a loaded data set.

/// What a data set asks a model to predict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// One of `classes` classes; `y` holds the class index as an `f32` (one per
    /// example, or one per position for `songs`).
    Classification {
        /// Number of classes (labels are `0..classes`).
        classes: usize,
    },
    /// Two classes; `y` holds `0.0` or `1.0` (one value per example).
    Binary,
    /// A real-valued target, one value per example, unscaled.
    Regression,
}

/// One split (train, validation or test) of a data set.
#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    /// Inputs, `n * prod(x_shape)` values, example-major then row-major.
    pub x: Vec<f32>,
    /// Targets, `n * prod(y_shape)` values, example-major (class indices, 0/1 or real
    /// numbers).
    pub y: Vec<f32>,
    /// Number of examples.
    pub n: usize,
}

impl Split {
    /// Number of input values per example (`x.len() / n`), 0 for an empty split.
    pub fn example_len(&self) -> usize {
        self.x.len().checked_div(self.n).unwrap_or(0)
    }
}

/// Per-feature standardisation `x' = (x - mean) / std`, computed from the
/// final training rows (after validation rows were removed).
#[derive(Clone, Debug, PartialEq)]
pub struct Scaling {
    /// Mean of each feature.
    pub mean: Vec<f32>,
    /// Population standard deviation of each feature (1 where it was 0).
    pub std: Vec<f32>,
}

/// A loaded data set with its fixed train / validation / test splits.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Canonical name: one of [`crate::DATASET_NAMES`].
    pub name: String,
    /// `"embedded"` or the path it was loaded from.
    pub source: String,
    /// What to predict.
    pub task: Task,
    /// Shape of one input example, e.g. `[8, 8]` or `[30]`.
    pub x_shape: Vec<usize>,
    /// Shape of one target: `[]` for classification, `[seq]` for `songs` (a class per
    /// position), `[1]` otherwise.
    pub y_shape: Vec<usize>,
    /// Training rows.
    pub train: Split,
    /// Validation rows, when asked for.
    pub val: Option<Split>,
    /// Test rows.
    pub test: Split,
    /// The standardisation applied to `x` (tabular data sets only).
    pub scaling: Option<Scaling>,
    /// Character-level text (`songs`): the sorted distinct characters of the file; a
    /// character's id in `x` and `y` is its index here.
    pub vocab: Option<Vec<char>>,
    /// Sparse inputs over the rows of every split (Cora's adjacency `adj`): the rows of a
    /// split are then one graph, trained and evaluated whole and in order.
    pub sparse: Vec<Sparse>,
}

/// A square sparse matrix in CSR form, its arrays as f32 (ids below 2^24 are exact).
#[derive(Clone, Debug, PartialEq)]
pub struct Sparse {
    /// Its name in a training section (`adj`).
    pub name: String,
    /// `rows + 1` offsets into `indices` and `values`.
    pub indptr: Vec<f32>,
    /// Column of each stored entry, row by row.
    pub indices: Vec<f32>,
    /// Value of each stored entry.
    pub values: Vec<f32>,
}

impl Dataset {
    /// Named dimensions a model may take from its data.
    ///
    /// Always `inputs` (product of `x_shape`) and `features` (same value);
    /// `height` and `width` for images; `classes` and `outputs` (= classes)
    /// for classification; `outputs` = 1 for binary and regression tasks; for text,
    /// also `vocab` (= classes) and `seq` (the window length).
    pub fn dims(&self) -> Vec<(String, usize)> {
        let inputs: usize = self.x_shape.iter().product();
        let mut dims = vec![
            ("inputs".to_string(), inputs),
            ("features".to_string(), inputs),
        ];
        if self.name == "point_mnist" {
            dims.push(("points".to_string(), self.x_shape[0]));
        } else if let [height, width] = self.x_shape[..] {
            dims.push(("height".to_string(), height));
            dims.push(("width".to_string(), width));
        }
        match self.task {
            Task::Classification { classes } => {
                dims.push(("classes".to_string(), classes));
                dims.push(("outputs".to_string(), classes));
            }
            Task::Binary | Task::Regression => dims.push(("outputs".to_string(), 1)),
        }
        if let (Some(vocab), [seq]) = (&self.vocab, &self.x_shape[..]) {
            dims.push(("vocab".to_string(), vocab.len()));
            dims.push(("seq".to_string(), *seq));
        }
        dims
    }

    /// Look up one entry of [`Dataset::dims`] by name.
    pub fn dim(&self, name: &str) -> Option<usize> {
        self.dims()
            .into_iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }

    /// The validation split if there is one, else the test split.
    pub fn eval_split(&self) -> &Split {
        self.val.as_ref().unwrap_or(&self.test)
    }
}
