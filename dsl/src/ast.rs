//! The syntax tree of a `.dl` file. Every node carries the byte span it came from, so
//! later stages (name resolution, shape checking) can point at the exact source.

/// A byte range in the source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span { start, end }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct File {
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Model(ModelDef),
    Fn(FnDef),
    Train(TrainDef),
    Import(Import),
}

/// `import "other.dl"`: the models and functions of another file, by a path relative to
/// the importing file.
#[derive(Clone, Debug, PartialEq)]
pub struct Import {
    pub path: String,
    pub span: Span,
}

impl Item {
    /// The name an item defines (a training section: the model it trains; an import:
    /// none).
    pub fn name(&self) -> Option<&Ident> {
        match self {
            Item::Model(m) => Some(&m.name),
            Item::Fn(f) => Some(&f.name),
            Item::Train(t) => Some(&t.model),
            Item::Import(_) => None,
        }
    }
}

/// `model Name(p1, p2: default) { members }`. Models are also the reusable layers:
/// `Dense` in the prelude is a model, and `dense1 = Dense(64, 128)` instantiates it.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelDef {
    pub name: Ident,
    pub params: Vec<ModelParam>,
    pub bindings: Vec<Binding>,
    pub fns: Vec<FnDef>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelParam {
    pub name: Ident,
    pub default: Option<Expr>,
}

/// `name = expr`: a member of a model or a setting of a training section.
#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    pub name: Ident,
    pub value: Expr,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FnDef {
    pub name: Ident,
    pub params: Vec<FnParam>,
    pub ret: Option<TypeExpr>,
    pub body: Block,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FnParam {
    pub name: Ident,
    pub ty: Option<TypeExpr>,
}

/// `f32[B, inputs]`: a dtype and one expression per dimension.
#[derive(Clone, Debug, PartialEq)]
pub struct TypeExpr {
    pub dtype: Ident,
    pub dims: Vec<Expr>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    pub lets: Vec<Let>,
    pub result: Expr,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Let {
    pub pattern: Pattern,
    pub value: Expr,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Pattern {
    Name(Ident),
    Tuple(Vec<Pattern>, Span),
}

/// `train Model on data(args) { statements }`.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainDef {
    pub model: Ident,
    pub data: Ident,
    pub data_args: Vec<Arg>,
    pub stmts: Vec<TrainStmt>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TrainStmt {
    /// `loss = …`, `optimizer = adam(lr: 1e-3)`, `batch = 64`, or a named value.
    Set(Binding),
    /// `early_stopping(patience: 2)`.
    Call {
        name: Ident,
        args: Vec<Arg>,
        span: Span,
    },
    /// `minimize expr over A, B with adam(2e-4)`.
    Minimize {
        loss: Expr,
        over: Vec<Ident>,
        with: Option<Expr>,
        span: Span,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    MatMul,
    Pow,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::MatMul => "@",
            BinOp::Pow => "**",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Number(f64),
    Str(String),
    Name(String),
    List(Vec<Expr>),
    Tuple(Vec<Expr>),
    Neg(Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Call(Box<Expr>, Vec<Arg>),
    Index(Box<Expr>, Vec<IndexItem>),
    Field(Box<Expr>, Ident),
    /// `if cond { then } else { otherwise }`, decided when compiling.
    If(Box<Expr>, Box<Block>, Box<Block>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum IndexItem {
    Expr(Expr),
    Slice {
        start: Option<Expr>,
        end: Option<Expr>,
        step: Option<Expr>,
        span: Span,
    },
}
