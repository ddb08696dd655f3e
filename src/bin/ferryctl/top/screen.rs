//! Drawing the views with ratatui and answering keys.

use super::fetch::{Control, Poller, Sample};
use super::model::{self, VIEWS};
use super::TopOptions;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table, TableState, Tabs};
use ratatui::{DefaultTerminal, Frame};
use std::time::Duration;

/// Shortest and longest refresh intervals `+` and `-` reach.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
const MAX_INTERVAL: Duration = Duration::from_secs(60);
/// How often keys are looked at while nothing else happens.
const KEY_POLL: Duration = Duration::from_millis(50);

/// What a key asks for.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    Quit,
    View(usize),
    Next,
    Previous,
    Up,
    Down,
    Faster,
    Slower,
    Nothing,
}

fn action(code: KeyCode, modifiers: KeyModifiers) -> Action {
    match code {
        KeyCode::Char('c') if modifiers.contains(KeyModifiers::CONTROL) => Action::Quit,
        KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc => Action::Quit,
        KeyCode::Char(c @ '1'..='9') => Action::View(c as usize - '1' as usize),
        KeyCode::Tab | KeyCode::Right => Action::Next,
        KeyCode::BackTab | KeyCode::Left => Action::Previous,
        KeyCode::Up => Action::Up,
        KeyCode::Down => Action::Down,
        KeyCode::Char('+') => Action::Faster,
        KeyCode::Char('-') => Action::Slower,
        _ => Action::Nothing,
    }
}

/// The screen's state.
pub struct Screen {
    socket: String,
    view: usize,
    interval: Duration,
    prev: Option<Sample>,
    cur: Option<Sample>,
    selected: TableState,
}

impl Screen {
    /// A screen showing `opts.view` first.
    pub fn new(opts: &TopOptions) -> Screen {
        Screen {
            socket: opts.socket.display().to_string(),
            view: opts.view.min(VIEWS.len() - 1),
            interval: opts.interval,
            prev: None,
            cur: None,
            selected: TableState::default(),
        }
    }

    /// Draws and answers keys until quit.
    pub fn run(mut self, terminal: &mut DefaultTerminal, poller: &Poller) -> std::io::Result<()> {
        let mut dirty = true;
        loop {
            while let Ok(sample) = poller.samples.try_recv() {
                self.prev = self.cur.replace(sample);
                dirty = true;
            }
            if dirty {
                terminal.draw(|f| self.draw(f))?;
                dirty = false;
            }
            if !event::poll(KEY_POLL)? {
                continue;
            }
            match event::read()? {
                Event::Key(k) if k.kind == KeyEventKind::Press => {
                    if !self.apply(action(k.code, k.modifiers), poller) {
                        return Ok(());
                    }
                    dirty = true;
                }
                Event::Resize(..) => dirty = true,
                _ => {}
            }
        }
    }

    /// Applies `a`; false to quit.
    fn apply(&mut self, a: Action, poller: &Poller) -> bool {
        let views = VIEWS.len();
        match a {
            Action::Quit => return false,
            Action::View(v) if v < views => self.view = v,
            Action::Next => self.view = (self.view + 1) % views,
            Action::Previous => self.view = (self.view + views - 1) % views,
            Action::Up => self.selected.select_previous(),
            Action::Down => self.selected.select_next(),
            Action::Faster | Action::Slower => {
                self.interval = if a == Action::Faster { self.interval / 2 } else { self.interval * 2 }
                    .clamp(MIN_INTERVAL, MAX_INTERVAL);
                let _ = poller.control.send(Control::Interval(self.interval));
            }
            Action::View(_) | Action::Nothing => {}
        }
        if matches!(a, Action::View(_) | Action::Next | Action::Previous) {
            self.selected = TableState::default();
        }
        true
    }

    fn draw(&mut self, f: &mut Frame) {
        let [tabs, body, status] =
            Layout::vertical([Constraint::Length(1), Constraint::Fill(1), Constraint::Length(2)]).areas(f.area());
        let titles = VIEWS.iter().enumerate().map(|(i, v)| format!("{} {v}", i + 1));
        let bold = Style::new().add_modifier(Modifier::BOLD);
        f.render_widget(
            Tabs::new(titles).select(self.view).highlight_style(bold.add_modifier(Modifier::REVERSED)),
            tabs,
        );
        let block = Block::bordered().title(format!(" {} ", VIEWS[self.view]));
        match &self.cur {
            None => f.render_widget(Paragraph::new(format!("asking ferryd at {} ...", self.socket)).block(block), body),
            Some(cur) => {
                let t = model::table(self.view, self.prev.as_ref(), cur);
                let widths = column_widths(&t);
                let rows = t.rows.into_iter().map(Row::new);
                let table = Table::new(rows, widths)
                    .header(Row::new(t.header).style(bold))
                    .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
                    .block(block);
                f.render_stateful_widget(table, body, &mut self.selected);
            }
        }
        let errors = self.cur.as_ref().map(|s| s.errors.join("; ")).unwrap_or_default();
        let state = if errors.is_empty() { "ok".to_string() } else { errors };
        let lines = vec![
            Line::from(format!("ferryd {} · every {:.1} s · {state}", self.socket, self.interval.as_secs_f64())),
            Line::from("1-5/Tab: view  ↑↓: select  +/-: faster/slower  q: quit"),
        ];
        f.render_widget(Paragraph::new(lines), status);
    }
}

/// Each column as wide as its widest cell (the last one takes what is left).
fn column_widths(t: &model::Table) -> Vec<Constraint> {
    let n = t.header.len();
    (0..n)
        .map(|i| {
            let widest = t.rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count()).max().unwrap_or(0);
            let w = widest.max(t.header[i].chars().count()) as u16;
            if i + 1 == n {
                Constraint::Min(w)
            } else {
                Constraint::Length(w)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_choose_views_and_quit() {
        let none = KeyModifiers::NONE;
        assert_eq!(action(KeyCode::Char('q'), none), Action::Quit);
        assert_eq!(action(KeyCode::Char('c'), KeyModifiers::CONTROL), Action::Quit);
        assert_eq!(action(KeyCode::Char('c'), none), Action::Nothing);
        assert_eq!(action(KeyCode::Char('4'), none), Action::View(3));
        assert_eq!(action(KeyCode::Tab, none), Action::Next);
        assert_eq!(action(KeyCode::BackTab, KeyModifiers::SHIFT), Action::Previous);
    }
}
